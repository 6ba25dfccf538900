//! Text or JSON Lines on stdout, colour only on a terminal, errors on stderr.

use std::io::{IsTerminal, Write};

use clap::builder::styling::{AnsiColor, Style};

/// How a word is coloured in text output.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Tone {
    /// Accepted, handled, 2xx.
    Good,
    /// Worth a look: duplicates, 409, stale events.
    Note,
    /// Refused, failed, 4xx and 5xx.
    Bad,
}

/// Where and how the command prints.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Output {
    /// JSON Lines instead of text.
    pub(crate) json: bool,
    color: bool,
}

impl Output {
    pub(crate) fn new(json: bool) -> Self {
        let color = !json
            && std::io::stdout().is_terminal()
            && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
        Self { json, color }
    }

    /// `text` in `tone`'s colour when stdout is a terminal.
    pub(crate) fn paint(&self, tone: Tone, text: &str) -> String {
        if !self.color {
            return text.to_owned();
        }
        let color = match tone {
            Tone::Good => AnsiColor::Green,
            Tone::Note => AnsiColor::Yellow,
            Tone::Bad => AnsiColor::Red,
        };
        let style = Style::new().fg_color(Some(color.into())).bold();
        format!("{style}{text}{style:#}")
    }

    /// The tone of an HTTP status.
    pub(crate) fn status_tone(status: u16) -> Tone {
        match status {
            200..=299 => Tone::Good,
            409 => Tone::Note,
            _ => Tone::Bad,
        }
    }

    /// Prints a line on stdout. A closed pipe (`| head`) is not an error
    /// worth a panic: the line is dropped.
    #[allow(clippy::unused_self)] // every print goes through `Output`
    pub(crate) fn line(&self, text: &str) {
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "{text}");
    }

    /// Prints one JSON object as a line on stdout (through [`json_text`]).
    pub(crate) fn json_line(&self, value: &serde_json::Value) {
        self.line(&json_text(value, false));
    }

    /// Prints an error on stderr: [`error_text`](Self::error_text).
    pub(crate) fn error(&self, code: &str, message: &str) {
        let text = self.error_text(code, message);
        let mut stderr = std::io::stderr().lock();
        let _ = writeln!(stderr, "{text}");
    }

    /// An error as printed: `error: MESSAGE`, or with `--json` one object,
    /// `{"error": CODE, "message": MESSAGE}` (through [`json_text`]). Values
    /// in a message are escaped where it is made; any character left that
    /// does not show as itself, but a line break, is written as a `\uXXXX`
    /// escape all the same.
    pub(crate) fn error_text(&self, code: &str, message: &str) -> String {
        if self.json {
            json_text(
                &serde_json::json!({ "error": code, "message": message }),
                false,
            )
        } else {
            format!(
                "error: {}",
                clink_webhooks::events::escape_invisible(message)
            )
        }
    }

    /// Prints `text` on stderr, as a note beside the output (whatever the
    /// format), and goes on if stderr is closed.
    pub(crate) fn note(text: &str) {
        let mut stderr = std::io::stderr().lock();
        let _ = writeln!(stderr, "{text}");
    }

    /// Prints a hint on stderr, in text output (JSON puts hints in a field).
    #[allow(clippy::unused_self)] // every print goes through `Output`
    pub(crate) fn hint(&self, text: &str) {
        let mut stderr = std::io::stderr().lock();
        let _ = writeln!(stderr, "hint: {text}");
    }
}

/// `text` as is when it is printable, else quoted with Rust's escapes, so
/// that a value from elsewhere (a body, a receiver's answer) can neither
/// colour the terminal, fake a line of output, nor hide or reorder text:
/// the crate's one rule, [`clink_webhooks::events::printable`] (control,
/// format and separator characters, and quotes).
pub(crate) fn escaped(text: &str) -> String {
    clink_webhooks::events::printable(text).into_owned()
}

/// `value` as JSON text, on one line or indented, with every character
/// that [does not show as itself](clink_webhooks::events::is_invisible)
/// written as a `\uXXXX` escape: the same value to a JSON reader, but one
/// that cannot colour a terminal, break a line or reorder text. (serde_json
/// escapes the control characters below U+0020 itself; the others, such as
/// U+007F, U+202E or U+2028, it writes as they are.)
pub(crate) fn json_text(value: &serde_json::Value, pretty: bool) -> String {
    let text = if pretty {
        serde_json::to_string_pretty(value).unwrap_or_default()
    } else {
        value.to_string()
    };
    // serde_json escapes the control characters below U+0020 in strings;
    // the only raw ones left are the indentation's line breaks.
    clink_webhooks::events::escape_invisible(&text).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_when_asked() {
        let plain = Output {
            json: false,
            color: false,
        };
        assert_eq!(plain.paint(Tone::Bad, "401"), "401");
        let coloured = Output {
            json: false,
            color: true,
        };
        let text = coloured.paint(Tone::Good, "200");
        assert!(
            text.starts_with("\u{1b}[") && text.contains("200") && text.ends_with("\u{1b}[0m"),
            "{text:?}"
        );
        assert!(!Output::new(true).color, "JSON is never coloured");
    }

    #[test]
    fn errors_never_print_what_does_not_show() {
        let message = "the body's type is \u{1b}[31mred\u{202e}x\u{2028}y";
        for json in [false, true] {
            let out = Output { json, color: false };
            let text = out.error_text("usage", message);
            assert!(
                !text.chars().any(clink_webhooks::events::is_invisible),
                "{text:?}"
            );
            if json {
                let value: serde_json::Value = serde_json::from_str(&text).unwrap();
                assert_eq!(value["message"], message);
                assert_eq!(value["error"], "usage");
            } else {
                assert_eq!(
                    text,
                    r"error: the body's type is \u001b[31mred\u202ex\u2028y"
                );
            }
        }
    }

    #[test]
    fn json_text_escapes_what_does_not_show() {
        let value = serde_json::json!({
            "id": "ord_1\u{202e}dlo",
            "note": "a\u{7f}b\u{2028}c\n\u{1b}[31m",
            "tag": "\u{e0041}",
            "name": "caf\u{e9} \u{65e5}",
        });
        for pretty in [false, true] {
            let text = json_text(&value, pretty);
            assert!(
                text.chars()
                    .all(|c| c == '\n' || !clink_webhooks::events::is_invisible(c)),
                "{text:?}"
            );
            assert!(text.contains(r"ord_1\u202edlo"), "{text}");
            assert!(text.contains(r"a\u007fb\u2028c\n\u001b[31m"), "{text}");
            assert!(text.contains(r"\udb40\udc41"), "{text}");
            assert!(text.contains("caf\u{e9} \u{65e5}"), "{text}");
            let back: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_eq!(back, value);
        }
        assert!(!json_text(&value, false).contains('\n'));
        assert!(json_text(&value, true).contains('\n'));
    }

    #[test]
    fn values_with_control_characters_or_quotes_are_escaped() {
        assert_eq!(escaped("signature_mismatch"), "signature_mismatch");
        assert_eq!(escaped("caf\u{e9} ok"), "caf\u{e9} ok");
        assert_eq!(
            escaped("\u{1b}[31mred\nsent 1"),
            "\"\\u{1b}[31mred\\nsent 1\""
        );
        assert_eq!(escaped("say \"hi\""), "\"say \\\"hi\\\"\"");
        assert_eq!(escaped("a\u{7f}b"), "\"a\\u{7f}b\"");
        // Characters that hide or reorder text, or break a line in a viewer.
        for (text, shown) in [
            ("evt_1\u{202e}dlo", r#""evt_1\u{202e}dlo""#),
            ("evt\u{200b}1", r#""evt\u{200b}1""#),
            ("evt\u{2028}1", r#""evt\u{2028}1""#),
        ] {
            assert_eq!(escaped(text), shown);
        }
    }
}
