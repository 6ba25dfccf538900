//! The server's framing scanner, which refuses a request carrying both
//! `Content-Length` and `Transfer-Encoding` (request smuggling): on a
//! connection of well-formed requests it refuses exactly from the first
//! ambiguous one, whatever the case and spacing of the headers, the chunk
//! sizes and the bodies; and on any bytes at all, it never panics and
//! reaches the same verdict however the bytes are split into reads.

#![no_main]

use clink_webhooks::server::fuzzing::refused_from;
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = run(data);
});

fn run(data: &[u8]) -> Result<()> {
    let mut u = Unstructured::new(data);
    if u.ratio(1, 4)? {
        // Any bytes: the verdict does not depend on how reads split them.
        let len = u.int_in_range(0..=512)?;
        let bytes = u.bytes(len)?.to_vec();
        let pieces = split(&mut u, &bytes)?;
        assert_eq!(refused_from(&pieces), refused_from(&[&bytes]));
        return Ok(());
    }
    let mut bytes = Vec::new();
    let mut expected = None;
    for index in 0..u.int_in_range(0..=6u64)? {
        let ambiguous = request(&mut u, &mut bytes)?;
        if ambiguous && expected.is_none() {
            expected = Some(index);
        }
    }
    let pieces = split(&mut u, &bytes)?;
    assert_eq!(
        refused_from(&pieces),
        expected,
        "{:?}",
        String::from_utf8_lossy(&bytes)
    );
    Ok(())
}

/// `bytes` cut at random points.
fn split<'a>(u: &mut Unstructured<'_>, mut bytes: &'a [u8]) -> Result<Vec<&'a [u8]>> {
    let mut pieces = Vec::new();
    while !bytes.is_empty() {
        let len = u.int_in_range(1..=bytes.len())?;
        let (piece, rest) = bytes.split_at(len);
        pieces.push(piece);
        bytes = rest;
    }
    Ok(pieces)
}

/// `name` in a random case.
fn cased(u: &mut Unstructured<'_>, name: &str) -> Result<String> {
    name.chars()
        .map(|c| Ok(if u.arbitrary()? { c.to_ascii_uppercase() } else { c }))
        .collect()
}

/// Optional whitespace, as a header value may have around it.
fn space(u: &mut Unstructured<'_>) -> Result<&'static str> {
    Ok(*u.choose(&["", " ", "  ", "\t", " \t"])?)
}

/// Appends one well-formed request to `out`: framed by length, by chunks,
/// by neither, or by both (ambiguous). Whether it is ambiguous.
fn request(u: &mut Unstructured<'_>, out: &mut Vec<u8>) -> Result<bool> {
    let len = u.int_in_range(0..=40)?;
    let body = u.bytes(len)?.to_vec();
    let (length, chunked) = match u.int_in_range(0..=3)? {
        0 => (false, false),
        1 => (true, false),
        2 => (false, true),
        _ => (true, true),
    };
    let mut headers: Vec<String> = Vec::new();
    for _ in 0..u.int_in_range(0..=2)? {
        let (name, value) = (u.int_in_range(0..=9)?, u.int_in_range(0..=999)?);
        headers.push(format!("X-Other-{name}: {value}"));
    }
    if length {
        let len = if chunked { u.int_in_range(0..=99)? } else { body.len() };
        headers.push(format!(
            "{}:{}{len}{}",
            cased(u, "content-length")?,
            space(u)?,
            space(u)?
        ));
    }
    if chunked {
        let value = cased(u, "chunked")?;
        headers.push(format!(
            "{}:{}{value}{}",
            cased(u, "transfer-encoding")?,
            space(u)?,
            space(u)?
        ));
    }
    // The framing headers anywhere among the others.
    let len = headers.len();
    for i in 0..len {
        let j = u.int_in_range(i..=len - 1)?;
        headers.swap(i, j);
    }
    out.extend_from_slice(b"POST /webhooks/clink HTTP/1.1\r\nHost: x\r\n");
    for header in &headers {
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if chunked {
        let mut rest = &body[..];
        while !rest.is_empty() {
            let size = u.int_in_range(1..=rest.len())?;
            let (chunk, after) = rest.split_at(size);
            let size = if u.arbitrary()? {
                format!("{size:x}")
            } else {
                format!("{size:X}")
            };
            out.extend_from_slice(size.as_bytes());
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(chunk);
            out.extend_from_slice(b"\r\n");
            rest = after;
        }
        out.extend_from_slice(b"0\r\n\r\n");
    } else if length {
        out.extend_from_slice(&body);
    }
    Ok(length && chunked)
}
