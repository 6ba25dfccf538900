//! What the tests look for in every response body and log line they see: a
//! signing key, as given or in the encodings a careless log line would
//! print it in.

// Only the modules that need the test kit send requests or run processes.
#![cfg_attr(not(feature = "test-util"), allow(dead_code))]

/// The forms of `key` that must never appear in output: the key as given,
/// its bytes in hex (lower and upper case), and in base64 (standard and URL
/// alphabets; unpadded, so a padded copy matches too).
pub(crate) fn forms(key: &str) -> Vec<String> {
    let bytes = key.as_bytes();
    vec![
        key.to_owned(),
        hex::encode(bytes),
        hex::encode_upper(bytes),
        base64(bytes, STANDARD),
        base64(bytes, URL_SAFE),
    ]
}

/// Fails the test when `text` holds any form of any of `keys`, naming
/// `what` the text is (a response body, a process's stderr).
#[track_caller]
pub(crate) fn assert_no_key(what: &str, text: &str, keys: &[&str]) {
    for key in keys {
        for form in forms(key) {
            assert!(
                !text.contains(&form),
                "{what} contains the signing key {key:?} (as {form:?}):\n{text}"
            );
        }
    }
}

const STANDARD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const URL_SAFE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// `bytes` in base64 with `alphabet`, without padding.
fn base64(bytes: &[u8], alphabet: &[u8; 64]) -> String {
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            let index = (n >> (18 - 6 * i)) & 0x3f;
            out.push(char::from(alphabet[usize::try_from(index).unwrap()]));
        }
    }
    out
}

#[test]
fn base64_matches_known_values() {
    assert_eq!(base64(b"", STANDARD), "");
    assert_eq!(base64(b"f", STANDARD), "Zg");
    assert_eq!(base64(b"fo", STANDARD), "Zm8");
    assert_eq!(base64(b"foo", STANDARD), "Zm9v");
    assert_eq!(base64(b"foobar", STANDARD), "Zm9vYmFy");
    assert_eq!(base64(&[0xfb, 0xff], STANDARD), "+/8");
    assert_eq!(base64(&[0xfb, 0xff], URL_SAFE), "-_8");
}
