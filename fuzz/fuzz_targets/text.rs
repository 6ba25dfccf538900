//! What the crate prints of a sender's text, and the account ids it takes,
//! against their rules written out here: `printable` leaves a text alone
//! exactly when every character shows as itself and it holds no quote, and
//! otherwise leaves no invisible character in what it prints;
//! `has_invisible` agrees with `is_invisible` on every character; an
//! account id is 1 to 128 ASCII letters, digits, `_`, `-` and `.`, and
//! neither `.` nor `..`.

#![no_main]

use clink_webhooks::accounts::{is_valid_account, MAX_ACCOUNT_LEN};
use clink_webhooks::events::{has_invisible, is_invisible, printable};
use libfuzzer_sys::fuzz_target;

/// Control characters, the Unicode format characters (Cf) this fuzz target
/// knows of independently, and the two separators.
fn reference_invisible(c: char) -> bool {
    let code = u32::from(c);
    c.is_control()
        || matches!(
            code,
            0xAD | 0x600..=0x605
                | 0x61C
                | 0x6DD
                | 0x70F
                | 0x890..=0x891
                | 0x8E2
                | 0x180E
                | 0x200B..=0x200F
                | 0x2028..=0x202E
                | 0x2060..=0x2064
                | 0x2066..=0x206F
                | 0xFEFF
                | 0xFFF9..=0xFFFB
                | 0x110BD
                | 0x110CD
                | 0x13430..=0x1343F
                | 0x1BCA0..=0x1BCA3
                | 0x1D173..=0x1D17A
                | 0xE0001
                | 0xE0020..=0xE007F
        )
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    for c in text.chars() {
        assert_eq!(is_invisible(c), reference_invisible(c), "{c:?}");
    }
    let invisible = text.chars().any(reference_invisible);
    assert_eq!(has_invisible(&text), invisible);
    let shown = printable(&text);
    if invisible || text.contains('"') {
        assert_ne!(shown, text);
        assert!(shown.starts_with('"') && shown.ends_with('"'), "{shown}");
        assert!(!shown.chars().any(reference_invisible), "{shown:?}");
    } else {
        assert_eq!(shown, text);
    }

    let valid = !text.is_empty()
        && text.len() <= MAX_ACCOUNT_LEN
        && text != "."
        && text != ".."
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    assert_eq!(is_valid_account(&text), valid, "{text:?}");
});
