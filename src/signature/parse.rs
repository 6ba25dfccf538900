//! Reading the signing headers: [`SignatureHeaders`], and the forms of
//! `X-Clink-Timestamp` and `X-Clink-Signature`.

use http::{HeaderMap, HeaderName, HeaderValue};

use super::error::{VerifyError, VerifyErrorKind};
use super::keys::SIGNATURE_LEN;
use crate::Timestamp;

/// Name of the header that carries the signing timestamp.
pub const TIMESTAMP_HEADER: &str = "x-clink-timestamp";
/// Name of the header that carries the hex HMAC-SHA256 signature.
pub const SIGNATURE_HEADER: &str = "x-clink-signature";
/// Name of the optional header that names the signature algorithm (`SHA256`).
pub const SIGN_TYPE_HEADER: &str = "x-clink-signtype";

/// The most digits a `u64` holds whatever they are: 10^19 - 1 fits
/// (`u64::MAX` is about 1.8 × 10^19), some numbers of 20 digits do not.
const MAX_SAFE_DIGITS: usize = 19;

/// Timestamps below this value are seconds; the rest are milliseconds.
const MILLIS_THRESHOLD: u64 = 1_000_000_000_000;

/// The signature headers of one request, read but not yet judged: each
/// check runs when its value is asked for, so that callers report problems
/// in the [`Verifier`](super::Verifier)'s one order: [`timestamp`](Self::timestamp),
/// then [`signature`](Self::signature), then the keys and the window.
pub(crate) struct SignatureHeaders<'h> {
    timestamp: Result<&'h str, VerifyError>,
    sign_type: Result<(), VerifyError>,
    signature: Result<&'h [u8], VerifyError>,
}

impl<'h> SignatureHeaders<'h> {
    pub(crate) fn from_headers(headers: &'h HeaderMap) -> Self {
        // Names made once, so that no comparison parses a name again.
        static TIMESTAMP: HeaderName = HeaderName::from_static(TIMESTAMP_HEADER);
        static SIGNATURE: HeaderName = HeaderName::from_static(SIGNATURE_HEADER);
        static SIGN_TYPE: HeaderName = HeaderName::from_static(SIGN_TYPE_HEADER);
        // One pass over the request's headers (every value of each), in
        // place of a lookup, and a hash of its name, for each of the three.
        let [mut timestamp, mut signature, mut sign_type] = [Found::default(); 3];
        for (name, value) in headers {
            let found = if *name == TIMESTAMP {
                &mut timestamp
            } else if *name == SIGNATURE {
                &mut signature
            } else if *name == SIGN_TYPE {
                &mut sign_type
            } else {
                continue;
            };
            found.repeated |= found.first.is_some();
            found.first = found.first.or(Some(value));
        }
        let timestamp = timestamp
            .text(VerifyErrorKind::MalformedTimestamp)
            .and_then(|ts| ts.ok_or(VerifyError::new(VerifyErrorKind::MissingTimestamp)));
        let sign_type = sign_type
            .text(VerifyErrorKind::UnsupportedSignType)
            .and_then(|sign_type| match sign_type {
                Some(sign_type) if !sign_type.trim().eq_ignore_ascii_case("SHA256") => {
                    Err(VerifyError::new(VerifyErrorKind::UnsupportedSignType))
                }
                _ => Ok(()),
            });
        // Its bytes, not its text: the 64 hex digits it must be are visible
        // ASCII, so a separate check of that would read it twice.
        let signature = signature
            .bytes(VerifyErrorKind::MalformedSignature)
            .and_then(|sig| sig.ok_or(VerifyError::new(VerifyErrorKind::MissingSignature)));
        Self {
            timestamp,
            sign_type,
            signature,
        }
    }

    /// `X-Clink-Timestamp`, present, single, and of the right form: its
    /// text (what was signed) and what it says.
    pub(crate) fn timestamp(&self) -> Result<(&'h str, Timestamp), VerifyError> {
        let timestamp = self.timestamp.clone()?;
        Ok((timestamp, parse_timestamp(timestamp)?))
    }

    /// The signature to check: `X-Clink-SignType` is `SHA256` or absent,
    /// and `X-Clink-Signature` is present, single, and 64 hex digits.
    pub(crate) fn signature(&self) -> Result<[u8; SIGNATURE_LEN], VerifyError> {
        self.sign_type.clone()?;
        parse_signature(self.signature.clone()?)
    }
}

/// One signing header as found in a request: its first value, and whether
/// it has more than one.
#[derive(Clone, Copy, Default)]
struct Found<'h> {
    first: Option<&'h HeaderValue>,
    repeated: bool,
}

impl<'h> Found<'h> {
    /// The header's value, `None` when it is absent; `malformed` when it has
    /// two values (ambiguous: refused rather than one picked).
    fn value(self, malformed: VerifyErrorKind) -> Result<Option<&'h HeaderValue>, VerifyError> {
        match self.first {
            Some(_) if self.repeated => Err(VerifyError::new(malformed)),
            first => Ok(first),
        }
    }

    /// As [`value`](Self::value), its bytes.
    fn bytes(self, malformed: VerifyErrorKind) -> Result<Option<&'h [u8]>, VerifyError> {
        Ok(self.value(malformed)?.map(HeaderValue::as_bytes))
    }

    /// As [`value`](Self::value), its text; `malformed` too when it is not
    /// visible ASCII.
    fn text(self, malformed: VerifyErrorKind) -> Result<Option<&'h str>, VerifyError> {
        self.value(malformed)?
            .map(|value| value.to_str().map_err(|_| VerifyError::new(malformed)))
            .transpose()
    }
}

/// Parses `X-Clink-Timestamp`: ASCII digits after trimming, seconds below
/// 10¹², milliseconds otherwise; anything else, or an overflow, is malformed.
pub(crate) fn parse_timestamp(text: &str) -> Result<Timestamp, VerifyError> {
    let malformed = || VerifyError::new(VerifyErrorKind::MalformedTimestamp);
    let digits = text.trim_ascii();
    if digits.is_empty() {
        return Err(malformed());
    }
    let mut value: u64 = 0;
    if digits.len() <= MAX_SAFE_DIGITS {
        // Too few digits to overflow: no checks on the way.
        let mut invalid = false;
        for b in digits.bytes() {
            let digit = b.wrapping_sub(b'0');
            invalid |= digit > 9;
            value = value.wrapping_mul(10).wrapping_add(u64::from(digit));
        }
        if invalid {
            return Err(malformed());
        }
    } else {
        for b in digits.bytes() {
            if !b.is_ascii_digit() {
                return Err(malformed());
            }
            value = value
                .checked_mul(10)
                .and_then(|v| v.checked_add(u64::from(b - b'0')))
                .ok_or_else(malformed)?;
        }
    }
    let millis = if value < MILLIS_THRESHOLD {
        value * 1000
    } else {
        value
    };
    i64::try_from(millis)
        .map(Timestamp::from_millis)
        .map_err(|_| malformed())
}

/// Decodes a 64-digit hex signature (either case) into its 32 bytes.
///
/// Every digit is decoded the same way and validity is checked once at the
/// end: no table lookups and no branch per digit. Decoding all 64 digits
/// first and pairing them up after keeps both loops simple enough for the
/// optimiser; this runs about three times faster than `hex::decode_to_slice`.
pub(crate) fn parse_signature(text: &[u8]) -> Result<[u8; SIGNATURE_LEN], VerifyError> {
    // Kept instead of `hex::decode_to_slice` because the difference shows in
    // `cargo bench --bench verify` (medians of `verify_at`, two runs each,
    // x86-64, 2 cores): with `hex`, 326-338 ns at 256 B and 718-745 ns at 1 KiB;
    // with this, 288 ns and 676-681 ns. That is 35-50 ns a delivery, +13-17% at
    // 256 B and +6-9% at 1 KiB, against an HMAC limit of about 262/662 ns.
    let Ok(digits) = <&[u8; SIGNATURE_LEN * 2]>::try_from(text.trim_ascii()) else {
        return Err(VerifyError::new(VerifyErrorKind::MalformedSignature));
    };
    let mut nibbles = [0u8; SIGNATURE_LEN * 2];
    let mut invalid = 0u8;
    for (nibble, &c) in nibbles.iter_mut().zip(digits) {
        let (value, not_hex) = hex_digit(c);
        *nibble = value;
        invalid |= not_hex;
    }
    if invalid != 0 {
        return Err(VerifyError::new(VerifyErrorKind::MalformedSignature));
    }
    let mut out = [0u8; SIGNATURE_LEN];
    for (byte, pair) in out.iter_mut().zip(nibbles.as_chunks::<2>().0) {
        *byte = (pair[0] << 4) | pair[1];
    }
    Ok(out)
}

/// The value of the hex digit `c` (either case), and 1 when it is not one.
#[inline]
fn hex_digit(c: u8) -> (u8, u8) {
    let is_digit = c.wrapping_sub(b'0') < 10;
    // Setting bit 5 folds `A`..`F` onto `a`..`f` and maps nothing else there.
    let is_letter = (c | 0x20).wrapping_sub(b'a') < 6;
    // The low four bits of `0`..`9` are their value; of `a`..`f`, value - 9.
    let value = (c & 0x0f) + if is_letter { 9 } else { 0 };
    (value, u8::from(!(is_digit | is_letter)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_parse_by_unit() {
        assert_eq!(
            parse_timestamp("1736942400").unwrap().as_millis(),
            1_736_942_400_000
        );
        assert_eq!(
            parse_timestamp("1736942400000").unwrap().as_millis(),
            1_736_942_400_000
        );
        assert_eq!(
            parse_timestamp(" 1736942400 ").unwrap().as_millis(),
            1_736_942_400_000
        );
        assert_eq!(
            parse_timestamp("999999999999").unwrap().as_millis(),
            999_999_999_999_000
        );
        assert_eq!(
            parse_timestamp("1000000000000").unwrap().as_millis(),
            1_000_000_000_000
        );
    }

    #[test]
    fn bad_timestamps_are_malformed() {
        for bad in [
            "",
            "   ",
            "+1736942400",
            "-1",
            "1e12",
            "17369 42400",
            "1736942400.5",
            "0x10",
            "1234567890123456789012345",
            "-9223372036854775808",
            "18446744073709551615",
            "9223372036854775808",
            "١٢٣",
        ] {
            let err = parse_timestamp(bad).unwrap_err();
            assert_eq!(err.kind(), VerifyErrorKind::MalformedTimestamp, "{bad:?}");
        }
        assert_eq!(
            parse_timestamp("9223372036854775807").unwrap().as_millis(),
            i64::MAX
        );
    }

    #[test]
    fn long_timestamps_never_wrap_around() {
        // 2^64 + 1736942400: read with wrapping arithmetic, it would be the
        // valid 1736942400 seconds.
        assert_eq!(
            parse_timestamp("18446744075446494016").unwrap_err().kind(),
            VerifyErrorKind::MalformedTimestamp
        );
        // 10^19 - 1, the most that 19 digits hold: past i64, so malformed.
        assert_eq!(
            parse_timestamp("9999999999999999999").unwrap_err().kind(),
            VerifyErrorKind::MalformedTimestamp
        );
        // Leading zeros add digits, not value: the long form reads the same.
        for (text, millis) in [
            ("0000000000001736942400", 1_736_942_400_000),
            ("00000000001736942400000", 1_736_942_400_000),
            ("09223372036854775807", i64::MAX),
        ] {
            assert_eq!(parse_timestamp(text).unwrap().as_millis(), millis, "{text}");
        }
        assert_eq!(
            parse_timestamp("0000000000001736942400x")
                .unwrap_err()
                .kind(),
            VerifyErrorKind::MalformedTimestamp
        );
    }

    #[test]
    fn signatures_must_be_exactly_64_hex_digits() {
        let good = "e07064a60193e751786c3f5a37fe7a5dc816bba53a2cb7781d0246b035dddfda";
        assert!(parse_signature(good.as_bytes()).is_ok());
        assert_eq!(
            parse_signature(good.to_uppercase().as_bytes()).unwrap(),
            parse_signature(good.as_bytes()).unwrap()
        );
        for bad in [
            String::new(),
            good[..63].to_owned(),
            format!("{good}0"),
            format!("{}g", &good[..63]),
            format!("sha256={good}"),
            "é".repeat(32),
        ] {
            assert_eq!(
                parse_signature(bad.as_bytes()).unwrap_err().kind(),
                VerifyErrorKind::MalformedSignature,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_sign_type_is_sha256_in_any_case_or_absent() {
        let good = "e07064a60193e751786c3f5a37fe7a5dc816bba53a2cb7781d0246b035dddfda";
        let headers = |sign_type: Option<&str>| {
            let mut map = HeaderMap::new();
            map.insert(TIMESTAMP_HEADER, "1700000000".parse().unwrap());
            map.insert(SIGNATURE_HEADER, good.parse().unwrap());
            if let Some(sign_type) = sign_type {
                map.insert(SIGN_TYPE_HEADER, sign_type.parse().unwrap());
            }
            map
        };
        for sign_type in [None, Some("SHA256"), Some("sha256"), Some(" Sha256 ")] {
            let map = headers(sign_type);
            let parts = SignatureHeaders::from_headers(&map);
            assert_eq!(
                parts.signature().unwrap(),
                parse_signature(good.as_bytes()).unwrap()
            );
            assert_eq!(
                parts.timestamp().unwrap(),
                ("1700000000", Timestamp::from_millis(1_700_000_000_000))
            );
        }
        for sign_type in ["MD5", "SHA1", "", "SHA-256"] {
            let map = headers(Some(sign_type));
            let parts = SignatureHeaders::from_headers(&map);
            assert_eq!(
                parts.signature().unwrap_err().kind(),
                VerifyErrorKind::UnsupportedSignType,
                "{sign_type:?}"
            );
            // The timestamp is judged first, and alone.
            assert!(parts.timestamp().is_ok());
        }
    }

    #[test]
    fn hex_digits_decode_like_char_to_digit() {
        for c in 0..=u8::MAX {
            let (value, invalid) = hex_digit(c);
            match char::from(c).to_digit(16) {
                Some(expected) => {
                    assert_eq!((u32::from(value), invalid), (expected, 0), "{c:#04x}");
                }
                None => assert_eq!(invalid, 1, "{c:#04x}"),
            }
        }
    }
}
