//! Header parsing: `Verifier::verify_headers_at` with arbitrary header maps
//! never panics, reports the first problem in the documented order, and
//! agrees with `verify_at` on the same values.

#![no_main]

#[path = "common.rs"]
mod common;

use clink_webhooks::signature::{
    Verifier, VerifyErrorKind, SIGNATURE_HEADER, SIGN_TYPE_HEADER, TIMESTAMP_HEADER,
};
use common::{at_ms, reference_signature};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;

const SECRET: &str = "whsec_fuzz";

fuzz_target!(|data: &[u8]| {
    let _ = run(data);
});

/// The single visible-ASCII value of `name`, or the error its absence,
/// repetition or bytes make.
fn single<'h>(
    map: &'h HeaderMap,
    name: &str,
    missing: Option<VerifyErrorKind>,
    malformed: VerifyErrorKind,
) -> std::result::Result<Option<&'h str>, VerifyErrorKind> {
    let values: Vec<_> = map.get_all(name).iter().collect();
    match values.as_slice() {
        [] => missing.map_or(Ok(None), Err),
        [one] => one.to_str().map(Some).map_err(|_| malformed),
        _ => Err(malformed),
    }
}

fn run(data: &[u8]) -> Result<()> {
    let mut u = Unstructured::new(data);
    let now_ms: u64 = u.int_in_range(1_000_000_000_000..=4_102_444_800_000)?;
    let fresh = now_ms
        .saturating_add_signed(u.int_in_range(-400_000..=400_000)?)
        .to_string();
    let body_len = u.int_in_range(0..=64)?;
    let body = u.bytes(body_len)?.to_vec();
    let good = reference_signature(SECRET.as_bytes(), &fresh, &body);

    let mut map = HeaderMap::new();
    for _ in 0..u.int_in_range(0..=6)? {
        let name: &[u8] = match u.int_in_range(0..=6)? {
            0 | 1 => TIMESTAMP_HEADER.as_bytes(),
            2 | 3 => SIGNATURE_HEADER.as_bytes(),
            4 => SIGN_TYPE_HEADER.as_bytes(),
            5 => b"X-Clink-Signature",
            _ => b"x-other",
        };
        let Ok(name) = HeaderName::from_bytes(name) else {
            continue;
        };
        let value: Vec<u8> = match u.int_in_range(0..=5)? {
            0 => fresh.clone().into_bytes(),
            1 => good.clone().into_bytes(),
            2 => b"SHA256".to_vec(),
            3 => format!(" {} ", good.to_uppercase()).into_bytes(),
            _ => {
                let len = u.int_in_range(0..=80)?;
                u.bytes(len)?.to_vec()
            }
        };
        if let Ok(value) = HeaderValue::from_bytes(&value) {
            map.append(name, value);
        }
    }

    let verifier = Verifier::new(SECRET).unwrap();
    let now = at_ms(now_ms);
    let got = verifier
        .verify_headers_at(&map, &body, now)
        .map(|v| (v.key_index(), v.signed_at()))
        .map_err(|e| e.kind());

    let expected = (|| {
        let ts = single(
            &map,
            TIMESTAMP_HEADER,
            Some(VerifyErrorKind::MissingTimestamp),
            VerifyErrorKind::MalformedTimestamp,
        )?
        .unwrap();
        if common::reference_timestamp(ts).is_none() {
            return Err(VerifyErrorKind::MalformedTimestamp);
        }
        let sign_type = single(
            &map,
            SIGN_TYPE_HEADER,
            None,
            VerifyErrorKind::UnsupportedSignType,
        )?;
        if sign_type.is_some_and(|t| !t.trim().eq_ignore_ascii_case("SHA256")) {
            return Err(VerifyErrorKind::UnsupportedSignType);
        }
        let sig = single(
            &map,
            SIGNATURE_HEADER,
            Some(VerifyErrorKind::MissingSignature),
            VerifyErrorKind::MalformedSignature,
        )?
        .unwrap();
        // From here on, the headers hold plain values: the same as verify_at.
        verifier
            .verify_at(ts, sig, &body, now)
            .map(|v| (v.key_index(), v.signed_at()))
            .map_err(|e| e.kind())
    })();
    assert_eq!(got, expected, "{map:?}");
    Ok(())
}
