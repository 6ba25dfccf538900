//! What the pages show, as text: filters read from a query and written back
//! into links, times and ages, the raw body indented, the activity chart.
//!
//! Nothing here escapes HTML: the templates do, every value. The one piece
//! of markup made here, the chart, is built from numbers alone.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Deserialize;

use crate::store::{InboxActivity, InboxFilter, InboxStatus, PageStart};
use crate::Timestamp;

/// The filter and page of the events list, as a query or a form sends them;
/// an empty field is no filter.
#[derive(Debug, Clone, Default, Deserialize)]
pub(super) struct Query {
    #[serde(default)]
    pub(super) status: String,
    #[serde(default, rename = "type")]
    pub(super) event_type: String,
    #[serde(default)]
    pub(super) account: String,
    #[serde(default)]
    pub(super) object: String,
    #[serde(default)]
    pub(super) from: String,
    #[serde(default)]
    pub(super) until: String,
    #[serde(default)]
    pub(super) before: String,
    #[serde(default)]
    pub(super) after: String,
    /// What an action just did, to say so (a word from a fixed list).
    #[serde(default)]
    pub(super) done: String,
    /// How many events it did it to.
    #[serde(default)]
    pub(super) count: String,
    /// The CSRF token, on a form.
    #[serde(default)]
    pub(super) csrf: String,
    /// `yes` to replay a handled event again.
    #[serde(default)]
    pub(super) force: String,
    /// With `force`: the replays the confirmed event had, as the
    /// confirmation page showed them.
    #[serde(default)]
    pub(super) replays: String,
    /// With `force`: when the confirmed event was handled, in epoch
    /// milliseconds (empty for never), as the confirmation page showed it.
    #[serde(default)]
    pub(super) handled: String,
    /// On a bulk replay: the newest of the dead events the page counted.
    #[serde(default)]
    pub(super) upto: String,
    /// On a bulk replay: how many dead events the page counted.
    #[serde(default)]
    pub(super) shown: String,
}

/// A filter field that could not be read, with what was wrong.
#[derive(Debug)]
pub(super) struct BadFilter(pub(super) String);

impl Query {
    /// The inbox filter the query names.
    pub(super) fn filter(&self) -> Result<InboxFilter, BadFilter> {
        // No stored field holds one (PostgreSQL cannot, and its inserts
        // put U+FFFD in its place), and PostgreSQL refuses it as a
        // parameter: a filter with it is the query's mistake, not the inbox's.
        for (what, text) in [
            ("type", &self.event_type),
            ("account", &self.account),
            ("object", &self.object),
        ] {
            if text.contains('\0') {
                return Err(BadFilter(format!(
                    "the {what} filter holds a NUL character, which no event's {what} holds"
                )));
            }
        }
        let mut filter = InboxFilter::default();
        if !self.status.is_empty() {
            filter = filter.status(
                InboxStatus::parse(&self.status)
                    .ok_or_else(|| BadFilter(format!("no status is called {:?}", self.status)))?,
            );
        }
        if !self.event_type.is_empty() {
            filter = filter.event_type(self.event_type.trim());
        }
        if !self.account.is_empty() {
            filter = filter.account(self.account.trim());
        }
        if !self.object.is_empty() {
            filter = filter.object_key(self.object.trim());
        }
        let time = |text: &str, what: &str| -> Result<Option<Timestamp>, BadFilter> {
            let text = text.trim();
            if text.is_empty() {
                return Ok(None);
            }
            parse_time(text)
                .map(Some)
                .map_err(|why| BadFilter(format!("{what} {text:?} {why}")))
        };
        Ok(filter.received(time(&self.from, "from")?, time(&self.until, "until")?))
    }

    /// Where the page starts.
    pub(super) fn start(&self) -> Result<PageStart, BadFilter> {
        let seq = |text: &str| {
            text.trim()
                .parse::<i64>()
                .map_err(|_| BadFilter(format!("{text:?} is not an event number")))
        };
        Ok(match (self.before.is_empty(), self.after.is_empty()) {
            (true, true) => PageStart::Newest,
            (false, _) => PageStart::Before(seq(&self.before)?),
            (true, false) => PageStart::After(seq(&self.after)?),
        })
    }

    /// The filter's fields as `(name, value)` pairs, the empty ones left
    /// out: for links and hidden form fields.
    pub(super) fn filter_pairs(&self) -> Vec<(&'static str, String)> {
        [
            ("status", &self.status),
            ("type", &self.event_type),
            ("account", &self.account),
            ("object", &self.object),
            ("from", &self.from),
            ("until", &self.until),
        ]
        .into_iter()
        .filter(|(_, value)| !value.is_empty())
        .map(|(name, value)| (name, value.clone()))
        .collect()
    }

    /// The query string of this filter with `more` pairs after it,
    /// `?`-prefixed, or empty.
    pub(super) fn query_string(&self, more: &[(&str, String)]) -> String {
        let mut pairs: Vec<(&str, String)> = self.filter_pairs();
        pairs.extend(more.iter().cloned());
        query_string(&pairs)
    }
}

/// `?a=1&b=2`, each name and each value percent-encoded; empty without
/// pairs.
pub(super) fn query_string(pairs: &[(&str, String)]) -> String {
    let mut query = String::new();
    for (i, (name, value)) in pairs.iter().enumerate() {
        query.push(if i == 0 { '?' } else { '&' });
        query.push_str(&percent_encode(name));
        query.push('=');
        query.push_str(&percent_encode(value));
    }
    query
}

/// `text` with everything but unreserved characters percent-encoded.
pub(super) fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

/// A time as a person types it: RFC 3339, or a form's `datetime-local`
/// value (`2026-12-02T20:13`, seconds optional), read as UTC; or epoch
/// milliseconds. A number that as milliseconds is before 2001-09-09 is
/// refused as most likely epoch seconds (as `date +%s` prints them): read
/// as milliseconds it would be January 1970, and a replay by that filter
/// would take nearly every dead event. `Err` says why, after the text.
pub(super) fn parse_time(text: &str) -> Result<Timestamp, &'static str> {
    /// 2001-09-09, the first time of 13 digits in milliseconds.
    const EARLIEST_MILLIS: i64 = 1_000_000_000_000;
    if let Ok(ms) = text.parse::<i64>() {
        return if ms >= EARLIEST_MILLIS {
            Ok(Timestamp::from_millis(ms))
        } else {
            Err(
                "is before 2001-09-09 as epoch milliseconds, so most likely epoch seconds: \
                 give milliseconds (the seconds followed by 000) or a time such as \
                 2025-01-15T12:00",
            )
        };
    }
    if let Ok(at) = Timestamp::parse_rfc3339(text) {
        return Ok(at);
    }
    let with_seconds = if text.len() == 16 {
        format!("{text}:00Z")
    } else {
        format!("{text}Z")
    };
    Timestamp::parse_rfc3339(&with_seconds).map_err(|_| "is not a time (UTC)")
}

/// A time for a person: `2026-12-02 20:13:33.123 UTC`.
pub(super) fn time(at: Timestamp) -> String {
    let text = at.to_string();
    match text.strip_suffix('Z') {
        Some(rfc) => format!("{} UTC", rfc.replacen('T', " ", 1)),
        None => text,
    }
}

/// A duration for a person: `850 ms`, `42 s`, `3 min 5 s`, `2 h 10 min`, `3 d 4 h`.
pub(super) fn duration(span: Duration) -> String {
    let ms = span.as_millis();
    let s = span.as_secs();
    match s {
        0 => format!("{ms} ms"),
        1..60 => format!("{s} s"),
        60..3600 => format!("{} min {} s", s / 60, s % 60),
        3600..86_400 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        _ => format!("{} d {} h", s / 86_400, s % 86_400 / 3600),
    }
}

/// How long ago `at` was, from `now`: `3 min 5 s ago`, or `in 2 s`.
pub(super) fn ago(at: Timestamp, now: Timestamp) -> String {
    let delta = now.as_millis().saturating_sub(at.as_millis());
    let span = Duration::from_millis(delta.unsigned_abs());
    if delta >= 0 {
        format!("{} ago", duration(span))
    } else {
        format!("in {}", duration(span))
    }
}

/// `n` with a comma between each group of three digits: `1,048,576`.
pub(super) fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// How much of a body the event page shows: 256 KiB of text, as shown
/// (indented, invisible characters spelled out).
pub(super) const BODY_SHOWN: usize = 256 * 1024;

/// How much of an error the event page shows: 16 KiB of text, as shown.
pub(super) const ERROR_SHOWN: usize = 16 * 1024;

/// How many levels of a JSON body are indented; deeper levels are
/// indented as much as this one, so that each byte of a body gives at
/// most `2 + 2 * MAX_INDENT` bytes of text however deep it nests.
pub(super) const MAX_INDENT: usize = 16;

/// Text as a page shows it, cut to a size: every character that does not
/// show as itself, but the line break, written as a `\uXXXX` escape
/// ([`escape_invisible`](crate::events::escape_invisible)), and never a
/// character or an escape cut in two.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Shown {
    /// The text shown.
    pub(super) text: String,
    /// How many bytes of the source it shows, from the start.
    pub(super) source_shown: usize,
    /// How many bytes the source has.
    pub(super) source_len: usize,
}

impl Shown {
    /// Whether part of the source is left out.
    pub(super) fn is_cut(&self) -> bool {
        self.source_shown < self.source_len
    }
}

/// Text written up to a size, each character as [`lines_limited`] shows
/// it.
struct Limited {
    out: String,
    limit: usize,
    full: bool,
}

impl Limited {
    fn new(limit: usize, hint: usize) -> Self {
        Self {
            out: String::with_capacity(hint.min(limit)),
            limit,
            full: false,
        }
    }

    /// Writes `c`, escaped if it does not show as itself; `false` (and
    /// nothing written from then on) once it does not fit.
    fn push(&mut self, c: char) -> bool {
        if self.full {
            return false;
        }
        let mut buf = [0u8; 4];
        let shown = crate::events::escape_invisible(c.encode_utf8(&mut buf));
        if self.out.len() + shown.len() > self.limit {
            self.full = true;
            return false;
        }
        self.out.push_str(&shown);
        true
    }

    /// Writes `text`, printable ASCII, whole or not at all.
    fn push_ascii(&mut self, text: &str) -> bool {
        if self.full || self.out.len() + text.len() > self.limit {
            self.full = true;
            return false;
        }
        self.out.push_str(text);
        true
    }

    /// A line break and the indentation of `depth` (at most [`MAX_INDENT`]).
    fn newline(&mut self, depth: usize) -> bool {
        self.push('\n') && (0..depth.min(MAX_INDENT)).all(|_| self.push_ascii("  "))
    }

    /// The text, and how many bytes of a source of `len` bytes it shows:
    /// `shown` when it filled up, all of them when it did not.
    fn finish(self, shown: usize, len: usize) -> (String, usize) {
        let shown = if self.full { shown } else { len };
        (self.out, shown)
    }
}

/// Text shown on several lines (an error, a body), cut to at most `limit`
/// bytes: as [`shown`], line breaks kept.
pub(super) fn lines_limited(text: &str, limit: usize) -> Shown {
    let mut out = Limited::new(limit, text.len());
    let mut shown = 0;
    for (at, c) in text.char_indices() {
        if !out.push(c) {
            break;
        }
        shown = at + c.len_utf8();
    }
    let (text_shown, source_shown) = out.finish(shown, text.len());
    Shown {
        text: text_shown,
        source_shown,
        source_len: text.len(),
    }
}

/// The body as text, at most [`BODY_SHOWN`] bytes of it: see
/// [`body_limited`].
pub(super) fn pretty_body(body: &[u8]) -> Shown {
    body_limited(body, BODY_SHOWN)
}

/// The body as text, cut to at most `limit` bytes: JSON indented by two
/// spaces a level (at most [`MAX_INDENT`] levels), each value kept byte
/// for byte (numbers are not reparsed, so `1.10` stays `1.10`); a body that
/// is not JSON as it is (lossy UTF-8). Either way every character that
/// does not show as itself, but the line break, is written as a `\uXXXX`
/// escape ([`escape_invisible`](crate::events::escape_invisible)). The
/// work is linear in the body, and the text no longer than `limit`
/// however deep the body nests.
pub(super) fn body_limited(body: &[u8], limit: usize) -> Shown {
    // `IgnoredAny` reads nested values with a stack of its own, not by
    // recursion: any depth is read in linear time.
    let json = serde_json::from_slice::<serde::de::IgnoredAny>(body)
        .ok()
        .and_then(|_| std::str::from_utf8(body).ok());
    let (text, source_shown) = match json {
        Some(json) => indent_json(json, limit),
        None => lossy_limited(body, limit),
    };
    Shown {
        text,
        source_shown,
        source_len: body.len(),
    }
}

/// `bytes` as lossy UTF-8, cut to `limit`; and how many bytes it shows.
fn lossy_limited(bytes: &[u8], limit: usize) -> (String, usize) {
    let mut out = Limited::new(limit, bytes.len());
    let mut shown = 0;
    'chunks: for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if !out.push(c) {
                break 'chunks;
            }
            shown += c.len_utf8();
        }
        if !chunk.invalid().is_empty() {
            if !out.push(char::REPLACEMENT_CHARACTER) {
                break;
            }
            shown += chunk.invalid().len();
        }
    }
    out.finish(shown, bytes.len())
}

/// A value from a delivery, for one line of a page: every character that
/// does not show as itself (a line break included) written as a `\uXXXX`
/// escape, so that a right-to-left override or a zero-width space in an id
/// cannot disguise it. The templates escape HTML on top of this.
pub(super) fn shown(text: &str) -> String {
    crate::events::escape_invisible(text).replace('\n', "\\u000a")
}

/// `text` whole as [`lines_limited`] shows it: as [`shown`], line breaks
/// kept.
#[cfg(test)]
fn lines(text: &str) -> String {
    crate::events::escape_invisible(text).into_owned()
}

/// Re-indents valid JSON without parsing its values, in one pass, cut to
/// `limit` bytes; and how many bytes of `json` it shows.
fn indent_json(json: &str, limit: usize) -> (String, usize) {
    let mut out = Limited::new(limit, json.len().saturating_mul(2));
    let mut shown = 0;
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    let mut chars = json.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        let end = at + c.len_utf8();
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            if !out.push(c) {
                break;
            }
            shown = end;
            continue;
        }
        match c {
            '{' | '[' => {
                // An empty object or array stays on one line.
                while chars.peek().is_some_and(|(_, c)| c.is_ascii_whitespace()) {
                    chars.next();
                }
                if let Some(&(close_at, '}' | ']')) = chars.peek() {
                    chars.next();
                    if !out.push_ascii(if c == '{' { "{}" } else { "[]" }) {
                        break;
                    }
                    shown = close_at + 1;
                } else {
                    if !out.push(c) {
                        break;
                    }
                    shown = end;
                    depth += 1;
                    if !out.newline(depth) {
                        break;
                    }
                }
            }
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                if !(out.newline(depth) && out.push(c)) {
                    break;
                }
                shown = end;
            }
            ',' => {
                if !out.push(c) {
                    break;
                }
                shown = end;
                if !out.newline(depth) {
                    break;
                }
            }
            ':' => {
                if !out.push_ascii(": ") {
                    break;
                }
                shown = end;
            }
            '"' => {
                in_string = true;
                if !out.push(c) {
                    break;
                }
                shown = end;
            }
            c if c.is_ascii_whitespace() => {}
            c => {
                if !out.push(c) {
                    break;
                }
                shown = end;
            }
        }
    }
    out.finish(shown, json.len())
}

/// The activity chart: for each interval a bar of events received and one
/// of events handled, as inline SVG made of numbers only.
pub(super) fn chart(activity: &InboxActivity) -> String {
    const WIDTH: usize = 10;
    const HEIGHT: u64 = 100;
    let n = activity.received.len();
    let top = activity
        .received
        .iter()
        .chain(&activity.handled)
        .copied()
        .max()
        .unwrap_or(0)
        .max(1);
    let width = n * WIDTH;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg class="chart" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" aria-label="events received and handled per minute">"#,
        w = width + 40,
        h = HEIGHT + 20,
    );
    let _ = write!(
        svg,
        r#"<line class="axis" x1="0" y1="{HEIGHT}" x2="{width}" y2="{HEIGHT}"/>"#
    );
    let minutes = activity.interval.as_secs() / 60;
    for (i, (received, handled)) in activity.received.iter().zip(&activity.handled).enumerate() {
        let x = i * WIDTH;
        for (offset, count, class) in [(1, *received, "received"), (5, *handled, "handled")] {
            if count == 0 {
                continue;
            }
            let h = (count * HEIGHT).div_ceil(top);
            let _ = write!(
                svg,
                r#"<rect class="{class}" x="{}" y="{}" width="4" height="{h}"><title>{count} {class}, {} min ago</title></rect>"#,
                x + offset,
                HEIGHT - h,
                (n - i) as u64 * minutes.max(1),
            );
        }
    }
    let _ = write!(
        svg,
        r#"<text x="{}" y="10">{top}</text><text x="0" y="{}">-{} min</text><text x="{}" y="{}" text-anchor="end">now</text></svg>"#,
        width + 4,
        HEIGHT + 16,
        n as u64 * minutes.max(1),
        width,
        HEIGHT + 16,
    );
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_seconds_are_refused_as_a_time_and_milliseconds_read() {
        let seconds = parse_time("1736942400").unwrap_err();
        assert!(seconds.contains("most likely epoch seconds"), "{seconds}");
        assert_eq!(
            parse_time("1736942400000"),
            Ok(Timestamp::from_millis(1_736_942_400_000))
        );
        assert_eq!(
            parse_time("2025-01-15T12:00"),
            Ok(Timestamp::from_millis(1_736_942_400_000))
        );
        assert_eq!(parse_time("yesterday"), Err("is not a time (UTC)"));
        let query = Query {
            until: "1736942400".to_owned(),
            ..Query::default()
        };
        let refused = query.filter().unwrap_err();
        assert!(
            refused.0.starts_with("until \"1736942400\" is before"),
            "{}",
            refused.0
        );
    }

    #[test]
    fn json_is_indented_with_every_value_kept() {
        let body = br#"{"id":"evt_1","amount":1.10,"big":12345678901234567890,"s":"a,{b}: \"c\"","e":{},"l":[1, 2]}"#;
        let pretty = pretty_body(body);
        assert_eq!(
            pretty.text,
            "{\n  \"id\": \"evt_1\",\n  \"amount\": 1.10,\n  \"big\": 12345678901234567890,\n  \
             \"s\": \"a,{b}: \\\"c\\\"\",\n  \"e\": {},\n  \"l\": [\n    1,\n    2\n  ]\n}"
        );
        assert!(!pretty.is_cut());
        assert_eq!(pretty_body(b"not json {").text, "not json {");
        assert_eq!(pretty_body(b"[ ]\n").text, "[]");
        assert!(!pretty_body(b"{\"a\": 1}\n\n").is_cut());
    }

    /// The body a deep nest gives: `depth` arrays around `values` numbers.
    fn nested(depth: usize, values: usize) -> String {
        let mut body = "[".repeat(depth);
        body.push_str(&"1,".repeat(values));
        body.push('1');
        body.push_str(&"]".repeat(depth));
        body
    }

    fn without_whitespace(text: &str) -> String {
        text.chars().filter(|c| !c.is_ascii_whitespace()).collect()
    }

    #[test]
    fn a_deep_body_gives_text_linear_in_its_size() {
        let per_byte = 2 + 2 * MAX_INDENT;
        for body in [
            nested(120, 20_000),
            nested(5_000, 0),
            "{\"a\":".repeat(3_000) + "{}" + &"}".repeat(3_000),
        ] {
            let shown = body_limited(body.as_bytes(), usize::MAX);
            assert!(!shown.is_cut());
            assert!(
                shown.text.len() <= per_byte * body.len(),
                "{} bytes of text for a body of {}",
                shown.text.len(),
                body.len()
            );
            // Every value kept, and nothing indented deeper than the cap.
            assert_eq!(without_whitespace(&shown.text), body);
            let deepest = shown
                .text
                .lines()
                .map(|line| line.len() - line.trim_start().len())
                .max()
                .unwrap();
            assert_eq!(deepest, 2 * MAX_INDENT);
        }
    }

    #[test]
    fn a_large_body_is_cut_at_a_character_and_says_how_much_it_shows() {
        let body = nested(200, 512 * 1024);
        let whole = body_limited(body.as_bytes(), usize::MAX);
        let shown = pretty_body(body.as_bytes());
        assert!(shown.is_cut());
        assert!(shown.text.len() <= BODY_SHOWN, "{}", shown.text.len());
        assert!(shown.text.len() > BODY_SHOWN - 2 * MAX_INDENT - 2);
        assert!(whole.text.starts_with(&shown.text));
        assert_eq!(shown.source_len, body.len());
        assert_eq!(
            without_whitespace(&shown.text),
            body[..shown.source_shown],
            "the bytes said to be shown are the ones shown"
        );

        // Text that is not JSON, of characters of two to four bytes and
        // invisible ones spelled out: cut between characters and escapes.
        let text = "é日\u{202e}\u{e0041}".repeat(10_000);
        for limit in 1..40 {
            let shown = body_limited(text.as_bytes(), limit);
            assert!(shown.text.len() <= limit);
            assert!(text.is_char_boundary(shown.source_shown));
            assert_eq!(shown.text, lines(&text[..shown.source_shown]), "{limit}");
        }
        let error = lines_limited(&text, 100);
        assert_eq!(error.text, lines(&text[..error.source_shown]));
        assert!(error.is_cut() && error.text.len() <= 100);
        let whole = lines_limited("short\nerror", 100);
        assert_eq!(
            (whole.text.as_str(), whole.is_cut()),
            ("short\nerror", false)
        );
        // Bytes that are not UTF-8: shown as lossy UTF-8 shows them.
        let bytes = b"ok \xff\xfe end \xe6\x97";
        let shown = body_limited(bytes, 100);
        assert_eq!(shown.text, String::from_utf8_lossy(bytes));
        assert!(!shown.is_cut());
    }

    #[test]
    fn filters_read_and_write_back() {
        let query = Query {
            status: "dead".to_owned(),
            event_type: "order.succeeded".to_owned(),
            from: "2026-12-02T20:13".to_owned(),
            before: "40".to_owned(),
            ..Query::default()
        };
        let filter = query.filter().unwrap();
        assert_eq!(filter.status, Some(InboxStatus::Dead));
        assert_eq!(
            filter.received_from,
            Some(Timestamp::parse_rfc3339("2026-12-02T20:13:00Z").unwrap())
        );
        assert_eq!(query.start().unwrap(), PageStart::Before(40));
        assert_eq!(
            query.query_string(&[("after", "3".to_owned())]),
            "?status=dead&type=order.succeeded&from=2026-12-02T20%3A13&after=3"
        );
        let bad = Query {
            status: "gone".to_owned(),
            ..Query::default()
        };
        assert!(bad.filter().is_err());
    }

    #[test]
    fn times_and_spans_read_well() {
        assert_eq!(
            time(Timestamp::from_millis(1_736_942_400_000)),
            "2025-01-15 12:00:00.000 UTC"
        );
        assert_eq!(duration(Duration::from_millis(850)), "850 ms");
        assert_eq!(duration(Duration::from_secs(185)), "3 min 5 s");
        assert_eq!(duration(Duration::from_secs(7_800)), "2 h 10 min");
        let now = Timestamp::from_millis(10_000);
        assert_eq!(ago(Timestamp::from_millis(8_000), now), "2 s ago");
        assert_eq!(ago(Timestamp::from_millis(12_000), now), "in 2 s");
        assert_eq!(thousands(1_048_576), "1,048,576");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(0), "0");
    }

    #[test]
    fn the_chart_is_numbers_only() {
        let mut activity =
            InboxActivity::new(Timestamp::from_millis(0), Duration::from_secs(60), 3);
        activity.received = vec![1, 0, 4];
        activity.handled = vec![0, 2, 4];
        let svg = chart(&activity);
        assert!(svg.starts_with("<svg"), "{svg}");
        assert_eq!(svg.matches("<rect").count(), 4, "{svg}");
        assert!(svg.contains(">4 received, 1 min ago<"), "{svg}");
    }
}
