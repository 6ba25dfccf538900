//! One rule for printing values a sender chose: [`is_invisible`] says which
//! characters do not show as themselves, [`printable`] escapes a value that
//! holds one.
//!
//! An event id, an event type, an object id or an account name comes from a
//! delivery's body or URL: whoever sends it chooses its characters. Printed
//! raw, a line break forges a log line, a terminal escape recolours or
//! rewrites the screen, and the Unicode format characters hide or reorder
//! text: U+202E (right-to-left override) shows `evt_1<U+202E>dlo` as
//! `evt_1old`, U+200B (zero width space) is not seen at all, U+2028 breaks a
//! line in many viewers. The crate refuses event ids holding any of these
//! (`400 invalid_event_id`), escapes every such value it logs, and the
//! `clink-webhook` CLI and the examples print through [`printable`].

use std::borrow::Cow;

/// The Unicode format characters (general category Cf, Unicode 16.0), as
/// inclusive ranges in order.
const FORMAT: &[(u32, u32)] = &[
    (0x00AD, 0x00AD),
    (0x0600, 0x0605),
    (0x061C, 0x061C),
    (0x06DD, 0x06DD),
    (0x070F, 0x070F),
    (0x0890, 0x0891),
    (0x08E2, 0x08E2),
    (0x180E, 0x180E),
    (0x200B, 0x200F),
    (0x202A, 0x202E),
    (0x2060, 0x2064),
    (0x2066, 0x206F),
    (0xFEFF, 0xFEFF),
    (0xFFF9, 0xFFFB),
    (0x110BD, 0x110BD),
    (0x110CD, 0x110CD),
    (0x13430, 0x1343F),
    (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A),
    (0xE0001, 0xE0001),
    (0xE0020, 0xE007F),
];

/// Whether `c` does not show as itself when printed: a control character
/// (`char::is_control`, category Cc: U+0000 to U+001F and U+007F to
/// U+009F), a format character (category Cf: soft hyphen, zero width
/// space and joiners, bidirectional marks, overrides and isolates, the byte
/// order mark, tags, ...), or the line or paragraph separator (U+2028,
/// U+2029; categories Zl and Zp).
///
/// ```
/// use clink_webhooks::events::is_invisible;
///
/// for c in ['\n', '\u{1b}', '\u{200b}', '\u{202e}', '\u{2028}', '\u{feff}'] {
///     assert!(is_invisible(c), "{c:?}");
/// }
/// for c in ['a', 'é', ' ', '\u{a0}', '日'] {
///     assert!(!is_invisible(c), "{c:?}");
/// }
/// ```
#[must_use]
pub fn is_invisible(c: char) -> bool {
    let code = u32::from(c);
    if code < 0xAD {
        return c.is_control();
    }
    if c.is_control() || code == 0x2028 || code == 0x2029 {
        return true;
    }
    FORMAT
        .binary_search_by(|&(first, last)| {
            if last < code {
                std::cmp::Ordering::Less
            } else if first > code {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        })
        .is_ok()
}

/// Whether `text` holds a character that [`is_invisible`]. Text of
/// printable ASCII only, as event ids are, is recognised eight bytes at a
/// time; any other text is read character by character.
#[must_use]
pub fn has_invisible(text: &str) -> bool {
    !all_printable_ascii(text.as_bytes()) && text.chars().any(is_invisible)
}

/// Whether every byte of `bytes` is printable ASCII, `' '` to `'~'`.
fn all_printable_ascii(bytes: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const TOPS: u64 = u64::from_ne_bytes([0x80; 8]);
    let (words, rest) = bytes.as_chunks::<8>();
    let mut outside = 0;
    for word in words {
        let x = u64::from_ne_bytes(*word);
        // In a word of bytes in range, subtracting 0x20 from each or adding
        // 1 to each neither borrows nor carries and sets no top bit. Take
        // the first byte (from the low end) out of range: nothing borrows
        // or carries into it, and it sets a top bit, below 0x20 by wrapping
        // to 0xe0 or more, at 0x7f to 0xfe by the 1 added, at 0xff by the
        // 0x20 taken away.
        outside |= x.wrapping_sub(ONES * 0x20) | x.wrapping_add(ONES);
    }
    outside & TOPS == 0 && rest.iter().all(|&b| matches!(b, 0x20..=0x7e))
}

/// `text` made safe to print on a terminal or in a log line: as it is when
/// every character shows as itself and it holds no `"`, otherwise quoted and
/// escaped as Rust's `{:?}` writes a string (`"evt_1\u{202e}dlo"`), so that
/// every invisible character is spelled out and the quotes say where the
/// value starts and ends. Borrowed when nothing needed escaping.
///
/// ```
/// use clink_webhooks::events::printable;
///
/// assert_eq!(printable("evt_1"), "evt_1");
/// assert_eq!(printable("caf\u{e9}"), "caf\u{e9}");
/// assert_eq!(printable("evt_1\nhandled"), r#""evt_1\nhandled""#);
/// assert_eq!(printable("evt_1\u{202e}dlo"), r#""evt_1\u{202e}dlo""#);
/// assert_eq!(printable("say \"hi\""), r#""say \"hi\"""#);
/// ```
#[must_use]
pub fn printable(text: &str) -> Cow<'_, str> {
    if has_invisible(text) || text.contains('"') {
        Cow::Owned(format!("{text:?}"))
    } else {
        Cow::Borrowed(text)
    }
}

/// `text` with every [invisible](is_invisible) character but the line
/// break written as a JSON escape (`\u202e`; a pair of them above
/// U+FFFF), for text shown on several lines: a body, an error, indented
/// JSON. JSON text stays the same JSON value, as long as it held no raw
/// control character inside a string (which JSON does not allow anyway).
/// Borrowed when nothing needed escaping.
///
/// ```
/// use clink_webhooks::events::escape_invisible;
///
/// assert_eq!(escape_invisible("line 1\nline 2"), "line 1\nline 2");
/// assert_eq!(escape_invisible("{\"id\":\"evt_1\u{202e}dlo\"}"), r#"{"id":"evt_1\u202edlo"}"#);
/// assert_eq!(escape_invisible("tab\there"), r"tab\u0009here");
/// ```
#[must_use]
pub fn escape_invisible(text: &str) -> Cow<'_, str> {
    let escape = |c: char| c != '\n' && is_invisible(c);
    if !text.chars().any(escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if escape(c) {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `has_invisible` must say, character by character; and checks
    /// on the way that the word-at-a-time test says what a byte-at-a-time
    /// one says (too strict would only be slower, so `has_invisible` alone
    /// would not show it).
    fn reference(text: &str) -> bool {
        let printable = text.bytes().all(|b| matches!(b, 0x20..=0x7e));
        assert_eq!(all_printable_ascii(text.as_bytes()), printable, "{text:?}");
        text.chars().any(is_invisible)
    }

    #[test]
    fn a_character_anywhere_in_a_word_or_the_tail_is_found() {
        let mut odd: Vec<char> = (0..=0x7f).filter_map(char::from_u32).collect();
        odd.extend([
            '\u{80}', '\u{9f}', '\u{a0}', '\u{ad}', 'é', '\u{202e}', '\u{2028}', '日',
        ]);
        odd.push(char::MAX);
        let mut found = 0;
        for len in 1..=25 {
            for at in 0..len {
                for &c in &odd {
                    let text: String = (0..len).map(|i| if i == at { c } else { 'a' }).collect();
                    assert_eq!(has_invisible(&text), reference(&text), "{text:?}");
                    found += usize::from(has_invisible(&text));
                }
            }
        }
        // Both answers were given, in every word position.
        assert!(found > 0);
        // Two characters outside the range, at every pair of places: one
        // cannot hide the other.
        for len in 2..=17 {
            for first in 0..len {
                for second in first + 1..len {
                    for (a, b) in [
                        ('\u{1f}', '\u{7f}'),
                        ('\u{7f}', '\u{1f}'),
                        ('\0', '~'),
                        (' ', '\u{7f}'),
                        ('é', '\n'),
                    ] {
                        let text: String = (0..len)
                            .map(|i| match i {
                                i if i == first => a,
                                i if i == second => b,
                                _ => '~',
                            })
                            .collect();
                        assert_eq!(has_invisible(&text), reference(&text), "{text:?}");
                    }
                }
            }
        }
        assert!(!has_invisible(&" ~".repeat(40)));
        assert!(has_invisible(&format!("{}\u{7f}", " ~".repeat(40))));
    }

    #[test]
    fn the_ranges_are_in_order_and_apart() {
        for pair in FORMAT.windows(2) {
            assert!(
                pair[0].0 <= pair[0].1 && pair[0].1 + 1 < pair[1].0,
                "{pair:?}"
            );
        }
    }

    #[test]
    fn invisible_is_control_format_or_separator() {
        // Every control character, as `char::is_control` says.
        for c in (0..=0x2ff).filter_map(char::from_u32) {
            assert_eq!(is_invisible(c), c.is_control() || c == '\u{ad}', "{c:?}");
            assert_eq!(has_invisible(&c.to_string()), is_invisible(c), "{c:?}");
        }
        // Each range's ends and its neighbours.
        for &(first, last) in FORMAT {
            for code in [first, last] {
                let c = char::from_u32(code).unwrap();
                assert!(is_invisible(c), "{c:?}");
                assert!(has_invisible(&format!("evt_{c}1")), "{c:?}");
            }
            for code in [first - 1, last + 1] {
                let c = char::from_u32(code).unwrap();
                let inside = FORMAT.iter().any(|&(a, b)| (a..=b).contains(&code));
                let separator = code == 0x2028 || code == 0x2029;
                assert_eq!(
                    is_invisible(c),
                    inside || separator || c.is_control(),
                    "{c:?}"
                );
            }
        }
        for c in ['\u{2028}', '\u{2029}'] {
            assert!(is_invisible(c), "{c:?}");
        }
        for c in [
            '\u{2027}', '\u{2030}', '\u{a0}', '\u{3000}', '\u{fffd}', '😀',
        ] {
            assert!(!is_invisible(c), "{c:?}");
        }
    }

    #[test]
    fn rust_debug_escapes_every_invisible_character() {
        // `printable` relies on it: no invisible character comes out raw.
        for &(first, last) in FORMAT {
            for code in first..=last {
                let c = char::from_u32(code).unwrap();
                let escaped = printable(&c.to_string()).into_owned();
                assert!(!escaped.chars().any(is_invisible), "{c:?}: {escaped}");
            }
        }
        for c in (0..0x100)
            .chain([0x2028, 0x2029])
            .filter_map(char::from_u32)
        {
            let escaped = printable(&format!("a{c}b")).into_owned();
            assert!(!escaped.chars().any(is_invisible), "{c:?}: {escaped}");
        }
    }

    #[test]
    fn escaped_json_is_the_same_json_with_every_invisible_character_spelled_out() {
        assert!(matches!(
            escape_invisible("line 1\nline 2 é"),
            Cow::Borrowed("line 1\nline 2 é")
        ));
        for (raw, escaped) in [
            ("\t", r"\u0009"),
            ("\u{7f}", r"\u007f"),
            ("\u{202e}", r"\u202e"),
            ("\u{2028}", r"\u2028"),
            ("\u{e0001}", r"\udb40\udc01"),
        ] {
            let json = format!(r#"{{"id":"evt{raw}1"}}"#);
            let out = escape_invisible(&json).into_owned();
            assert_eq!(out, format!(r#"{{"id":"evt{escaped}1"}}"#), "{raw:?}");
            assert!(!out.chars().any(is_invisible), "{out}");
            let parsed: serde_json::Value = serde_json::from_str(&out).unwrap();
            assert_eq!(parsed["id"], format!("evt{raw}1"), "{raw:?}");
        }
        // Line breaks stay: the text is shown on several lines.
        assert_eq!(escape_invisible("a\n\u{200b}b"), "a\n\\u200bb");
    }

    #[test]
    fn plain_text_is_borrowed() {
        assert!(matches!(printable("evt_1 é"), Cow::Borrowed(_)));
        assert!(matches!(printable(""), Cow::Borrowed(_)));
        assert_eq!(printable("a\"b"), r#""a\"b""#);
    }
}
