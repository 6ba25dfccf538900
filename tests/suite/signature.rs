//! Signature verification through the public API: the published test
//! vectors, the tolerance window, malformed input, key rotation, the header
//! and incremental entry points, and what errors may say.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clink_webhooks::signature::{
    sign, SigningKey, Verified, Verifier, VerifyError, VerifyErrorKind, DEFAULT_TOLERANCE,
};
use clink_webhooks::Timestamp;
use http::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;
use sha2::{Digest, Sha256};

fn at_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

fn kind(result: Result<Verified, VerifyError>) -> VerifyErrorKind {
    match result {
        Ok(verified) => panic!("expected a refusal, got {verified:?}"),
        Err(err) => err.kind(),
    }
}

/// The vectors of clink-webhooks.md §6, reproduced byte for byte.
mod vectors {
    pub(crate) const SECRET_1: &str = "test_webhook_signing_key";
    pub(crate) const TS_1: &str = "1700000000000";
    pub(crate) const BODY_1: &[u8] = br#"{"id":"evt_test"}"#;
    pub(crate) const SIG_1: &str =
        "e07064a60193e751786c3f5a37fe7a5dc816bba53a2cb7781d0246b035dddfda";

    pub(crate) const SECRET_2: &str = "whsec_test_123";
    pub(crate) const TS_2: &str = "1736942400";
    pub(crate) const BODY_2: &[u8] = br#"{"id":"evt_order_succeeded_test","object":"event","created":"2025-01-15T12:00:00.000Z","type":"order.succeeded","data":{"orderId":"ord_test_123","status":"success","amountTotal":19.99}}"#;
    pub(crate) const SIG_2: &str =
        "d61addcde690be84473aedd0abdefe1c3a5bfc070ddc3323253106b6384c75b0";

    pub(crate) const SECRET_3: &str = "whsec_test_123";
    pub(crate) const TS_3: &str = "1736942400000";
    pub(crate) const BODY_3_TEXT: &str = "{\"id\":\"evt_2\",\"object\":\"event\",\"type\":\"session.complete\",\"data\":{\"sessionId\":\"sess_test_123\",\"customer\":{\"email\":\"josé@example.com\"}}}\n";
    pub(crate) const BODY_3_HEX: &str = "7b226964223a226576745f32222c226f626a656374223a226576656e74222c2274797065223a2273657373696f6e2e636f6d706c657465222c2264617461223a7b2273657373696f6e4964223a22736573735f746573745f313233222c22637573746f6d6572223a7b22656d61696c223a226a6f73c3a9406578616d706c652e636f6d227d7d7d0a";
    pub(crate) const SIG_3: &str =
        "f7688e1969c9e3a8faeb9245a3b94cdd9c64ad3fca8f8ac328153267c48fbdb2";

    /// Body 2 signed with the timestamp in milliseconds instead of seconds.
    pub(crate) const SIG_2_AS_MS: &str =
        "1e4fbb8a71c0d931bde57589f33cdeaa62b184bb9a4eda2035b00162aebf9821";
    /// Body 3 without its trailing newline.
    pub(crate) const SIG_3_NO_LF: &str =
        "bb8cb150b678f2c1a30c00f8904390fc8e7896ec40bc26a3a2e6419dcb75cc9a";

    pub(crate) fn body_3() -> Vec<u8> {
        hex::decode(BODY_3_HEX).expect("body 3 hex")
    }
}

use vectors::*;

const MS_1: u64 = 1_700_000_000_000;
const MS_2: u64 = 1_736_942_400_000;

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[test]
fn vector_bodies_are_reproduced_exactly() {
    assert_eq!(BODY_1.len(), 17);
    assert_eq!(
        sha256_hex(BODY_1),
        "4bb7406fc70ad66cef957cacf20a81aea8ddff2a5dfe12721f016c0baaa1a225"
    );
    assert_eq!(BODY_2.len(), 185);
    assert_eq!(
        sha256_hex(BODY_2),
        "0da1da477c3e38481a3c8271c6a1db3f5a5c1f374d473ff9865f5557b1b6b3ad"
    );
    let body_3 = body_3();
    assert_eq!(body_3.len(), 136);
    assert_eq!(body_3, BODY_3_TEXT.as_bytes());
    assert_eq!(body_3.last(), Some(&b'\n'));
    assert_eq!(body_3.windows(2).filter(|w| w == &[0xc3, 0xa9]).count(), 1);
    assert_eq!(
        sha256_hex(&body_3),
        "89d0fe624f8652426da1c0c0eab1410dcf372d668262716dcb1269ff6af13c18"
    );
}

#[test]
fn sign_reproduces_every_vector() {
    assert_eq!(sign(SECRET_1, TS_1, BODY_1), SIG_1);
    assert_eq!(sign(SECRET_2, TS_2, BODY_2), SIG_2);
    assert_eq!(sign(SECRET_3, TS_3, &body_3()), SIG_3);
    assert_eq!(sign(SECRET_2, TS_3, BODY_2), SIG_2_AS_MS);
    assert_eq!(
        sign(SECRET_3, TS_3, &body_3()[..body_3().len() - 1]),
        SIG_3_NO_LF
    );
    // Secrets given as bytes or an owned string sign the same way.
    assert_eq!(sign(SECRET_1.as_bytes(), TS_1, BODY_1), SIG_1);
    let owned = String::from(SECRET_1);
    assert_eq!(sign(owned, TS_1, BODY_1), SIG_1);
}

#[test]
fn every_vector_verifies() {
    let v1 = Verifier::new(SECRET_1).unwrap();
    let ok = v1.verify_at(TS_1, SIG_1, BODY_1, at_ms(MS_1)).unwrap();
    assert_eq!(ok.key_index(), 0);
    assert_eq!(ok.signed_at(), Timestamp::from_millis(1_700_000_000_000));

    let v2 = Verifier::new(SECRET_2).unwrap();
    let ok = v2.verify_at(TS_2, SIG_2, BODY_2, at_ms(MS_2)).unwrap();
    assert_eq!(ok.key_index(), 0);
    // Seconds are read as seconds: 1736942400 s is 1736942400000 ms.
    assert_eq!(ok.signed_at().as_millis(), 1_736_942_400_000);

    let v3 = Verifier::new(SECRET_3).unwrap();
    let ok = v3.verify_at(TS_3, SIG_3, &body_3(), at_ms(MS_2)).unwrap();
    assert_eq!(ok.signed_at().as_millis(), 1_736_942_400_000);
}

#[test]
fn negative_vectors_are_refused() {
    let verifier = Verifier::new(SECRET_2).unwrap();
    let now = at_ms(MS_2);

    // Body 2 with the timestamp header in ms: same instant, different signed text.
    assert_eq!(
        kind(verifier.verify_at(TS_3, SIG_2, BODY_2, now)),
        VerifyErrorKind::SignatureMismatch
    );
    assert_eq!(
        kind(verifier.verify_at(TS_2, SIG_2_AS_MS, BODY_2, now)),
        VerifyErrorKind::SignatureMismatch
    );
    // The signature made over the ms text does verify with the ms text.
    assert!(verifier.verify_at(TS_3, SIG_2_AS_MS, BODY_2, now).is_ok());

    // Body 3 without its trailing newline.
    let body_3 = body_3();
    let trimmed = &body_3[..body_3.len() - 1];
    assert_eq!(
        kind(verifier.verify_at(TS_3, SIG_3, trimmed, now)),
        VerifyErrorKind::SignatureMismatch
    );
    assert_eq!(
        kind(verifier.verify_at(TS_3, SIG_3_NO_LF, &body_3, now)),
        VerifyErrorKind::SignatureMismatch
    );
    assert!(verifier.verify_at(TS_3, SIG_3_NO_LF, trimmed, now).is_ok());

    // Right signature, wrong secret.
    let other = Verifier::new(SECRET_1).unwrap();
    assert_eq!(
        kind(other.verify_at(TS_2, SIG_2, BODY_2, now)),
        VerifyErrorKind::SignatureMismatch
    );
    // A secret that is a prefix of the right one is a different key.
    let prefix = Verifier::new("whsec_test_12").unwrap();
    assert_eq!(
        kind(prefix.verify_at(TS_2, SIG_2, BODY_2, now)),
        VerifyErrorKind::SignatureMismatch
    );
}

#[test]
fn cli_tolerance_vector() {
    let verifier = Verifier::new(SECRET_1).unwrap();
    assert!(verifier
        .verify_at(TS_1, SIG_1, BODY_1, at_ms(1_700_000_000_000))
        .is_ok());
    assert_eq!(
        kind(verifier.verify_at(TS_1, SIG_1, BODY_1, at_ms(1_700_000_601_000))),
        VerifyErrorKind::TooOld
    );
}

#[test]
fn system_clock_entry_point_accepts_a_fresh_delivery() {
    let verifier = Verifier::new(SECRET_2).unwrap();
    let ts = Timestamp::now().as_millis().to_string();
    let sig = sign(SECRET_2, &ts, BODY_2);
    assert!(verifier.verify(&ts, &sig, BODY_2).is_ok());
    // The vector's 2025 timestamp is long outside any window of today's clock.
    assert_eq!(
        kind(verifier.verify(TS_2, SIG_2, BODY_2)),
        VerifyErrorKind::TooOld
    );
}

// ---------------------------------------------------------------------------
// Tolerance window
// ---------------------------------------------------------------------------

const MS: Duration = Duration::from_millis(1);

/// One signed delivery at a fixed instant, in either unit.
struct Delivery {
    verifier: Verifier,
    ts: String,
    sig: String,
    signed_at: SystemTime,
}

impl Delivery {
    fn new(verifier: Verifier, ts: &str) -> Self {
        let secret = "whsec_window";
        let value: u64 = ts.parse().unwrap();
        let millis = if value < 1_000_000_000_000 {
            value * 1000
        } else {
            value
        };
        Self {
            verifier,
            ts: ts.to_owned(),
            sig: sign(secret, ts, BODY_1),
            signed_at: at_ms(millis),
        }
    }

    fn check(&self, now: SystemTime) -> Result<Verified, VerifyError> {
        self.verifier.verify_at(&self.ts, &self.sig, BODY_1, now)
    }
}

fn window_verifier() -> Verifier {
    Verifier::new("whsec_window").unwrap()
}

/// Both units of the same kind of instant: `1736942400` (s) and `1736942400123` (ms).
const WINDOW_TIMESTAMPS: [&str; 3] = ["1736942400", "1736942400000", "1736942400123"];

#[test]
fn default_tolerance_is_inclusive_at_300_s_in_both_directions() {
    assert_eq!(DEFAULT_TOLERANCE, Duration::from_secs(300));
    let edge = Duration::from_secs(300);
    for ts in WINDOW_TIMESTAMPS {
        let d = Delivery::new(window_verifier(), ts);
        assert!(d.check(d.signed_at).is_ok(), "{ts} at its own instant");
        assert!(d.check(d.signed_at + edge).is_ok(), "{ts} 300 s old");
        assert!(d.check(d.signed_at - edge).is_ok(), "{ts} 300 s ahead");
        assert_eq!(
            kind(d.check(d.signed_at + edge + MS)),
            VerifyErrorKind::TooOld,
            "{ts} 300.001 s old"
        );
        assert_eq!(
            kind(d.check(d.signed_at - edge - MS)),
            VerifyErrorKind::InFuture,
            "{ts} 300.001 s ahead"
        );
    }
}

#[test]
fn window_errors_say_by_how_much() {
    let d = Delivery::new(window_verifier(), "1736942400");
    let old = d
        .check(d.signed_at + Duration::from_secs(300) + MS)
        .unwrap_err();
    let text = old.to_string();
    assert!(text.contains("300.001 s old"), "{text}");
    assert!(text.contains("300.000 s tolerance"), "{text}");
    let ahead = d
        .check(d.signed_at - Duration::from_secs(301))
        .unwrap_err()
        .to_string();
    assert!(ahead.contains("301.000 s ahead"), "{ahead}");
}

#[test]
fn max_age_and_max_future_skew_are_separate() {
    let ten = Duration::from_secs(10);
    let default = Duration::from_secs(300);
    for ts in WINDOW_TIMESTAMPS {
        let d = Delivery::new(window_verifier().max_age(ten), ts);
        assert!(d.check(d.signed_at + ten).is_ok());
        assert_eq!(
            kind(d.check(d.signed_at + ten + MS)),
            VerifyErrorKind::TooOld
        );
        assert!(d.check(d.signed_at - default).is_ok());
        assert_eq!(
            kind(d.check(d.signed_at - default - MS)),
            VerifyErrorKind::InFuture
        );

        let d = Delivery::new(window_verifier().max_future_skew(ten), ts);
        assert!(d.check(d.signed_at - ten).is_ok());
        assert_eq!(
            kind(d.check(d.signed_at - ten - MS)),
            VerifyErrorKind::InFuture
        );
        assert!(d.check(d.signed_at + default).is_ok());
        assert_eq!(
            kind(d.check(d.signed_at + default + MS)),
            VerifyErrorKind::TooOld
        );
    }
}

#[test]
fn tolerance_sets_both_directions() {
    let two = Duration::from_secs(2);
    let d = Delivery::new(window_verifier().tolerance(two), "1736942400000");
    assert!(d.check(d.signed_at + two).is_ok());
    assert!(d.check(d.signed_at - two).is_ok());
    assert_eq!(
        kind(d.check(d.signed_at + two + MS)),
        VerifyErrorKind::TooOld
    );
    assert_eq!(
        kind(d.check(d.signed_at - two - MS)),
        VerifyErrorKind::InFuture
    );

    // A later call overrides only its own direction.
    let d = Delivery::new(
        window_verifier()
            .tolerance(two)
            .max_age(Duration::from_secs(60)),
        "1736942400000",
    );
    assert!(d.check(d.signed_at + Duration::from_secs(60)).is_ok());
    assert_eq!(
        kind(d.check(d.signed_at - two - MS)),
        VerifyErrorKind::InFuture
    );
}

#[test]
fn zero_tolerance_means_exactly_now() {
    for ts in WINDOW_TIMESTAMPS {
        let d = Delivery::new(window_verifier().tolerance(Duration::ZERO), ts);
        assert!(d.check(d.signed_at).is_ok(), "{ts}");
        assert_eq!(kind(d.check(d.signed_at + MS)), VerifyErrorKind::TooOld);
        assert_eq!(kind(d.check(d.signed_at - MS)), VerifyErrorKind::InFuture);
    }
    // Zero in one direction only.
    let d = Delivery::new(
        window_verifier().max_future_skew(Duration::ZERO),
        "1736942400000",
    );
    assert!(d.check(d.signed_at + Duration::from_secs(300)).is_ok());
    assert_eq!(kind(d.check(d.signed_at - MS)), VerifyErrorKind::InFuture);
}

#[test]
fn freshness_is_checked_before_the_signature() {
    let d = Delivery::new(window_verifier(), "1736942400000");
    let wrong = sign("whsec_other", &d.ts, BODY_1);
    let stale = d.signed_at + Duration::from_secs(3600);
    assert_eq!(
        kind(d.verifier.verify_at(&d.ts, &wrong, BODY_1, stale)),
        VerifyErrorKind::TooOld
    );
}

#[test]
fn huge_tolerance_and_extreme_clocks_do_not_panic() {
    let d = Delivery::new(window_verifier().tolerance(Duration::MAX), "1736942400000");
    assert!(d.check(UNIX_EPOCH).is_ok());
    assert!(d
        .check(UNIX_EPOCH - Duration::from_secs(86_400 * 365 * 1000))
        .is_ok());
    let d = Delivery::new(window_verifier(), "1736942400000");
    assert_eq!(
        kind(d.check(UNIX_EPOCH - Duration::from_secs(86_400))),
        VerifyErrorKind::InFuture
    );
}

// ---------------------------------------------------------------------------
// Timestamp text
// ---------------------------------------------------------------------------

#[test]
fn surrounding_whitespace_is_trimmed_but_signed_as_received() {
    let verifier = Verifier::new(SECRET_2).unwrap();
    let now = at_ms(MS_2);
    let padded = " 1736942400 ";
    let sig_over_padded = sign(SECRET_2, padded, BODY_2);
    let ok = verifier
        .verify_at(padded, &sig_over_padded, BODY_2, now)
        .unwrap();
    assert_eq!(ok.signed_at().as_millis(), 1_736_942_400_000);
    // The HMAC covers the header text as received, spaces included.
    assert_ne!(sig_over_padded, SIG_2);
    assert_eq!(
        kind(verifier.verify_at(padded, SIG_2, BODY_2, now)),
        VerifyErrorKind::SignatureMismatch
    );
}

#[test]
fn malformed_timestamps_are_refused_as_such() {
    let verifier = Verifier::new(SECRET_2).unwrap();
    let i64_min = i64::MIN.to_string();
    let u64_max = u64::MAX.to_string();
    let past_i64 = (i64::MAX.unsigned_abs() + 1).to_string();
    for ts in [
        "",
        "   ",
        "+1736942400",
        "-1",
        "1e12",
        "1736942400.0",
        "1736 942400",
        "0x6786b2c0",
        "1234567890123456789012345",
        &i64_min,
        &u64_max,
        &past_i64,
        "١٧٣٦٩٤٢٤٠٠",
    ] {
        // Signed correctly over that exact text: only the timestamp is wrong.
        let sig = sign(SECRET_2, ts, BODY_2);
        let err = verifier
            .verify_at(ts, &sig, BODY_2, at_ms(MS_2))
            .unwrap_err();
        assert_eq!(err.kind(), VerifyErrorKind::MalformedTimestamp, "{ts:?}");
        assert!(err.kind().is_malformed_request());
        assert_eq!(err.kind().code(), "malformed_timestamp");
        assert_eq!(
            verifier.begin_at(ts, at_ms(MS_2)).unwrap_err().kind(),
            VerifyErrorKind::MalformedTimestamp,
            "{ts:?}"
        );
    }
}

#[test]
fn unit_split_is_at_ten_to_the_twelfth() {
    let verifier = Verifier::new(SECRET_2).unwrap().tolerance(Duration::ZERO);
    for (ts, millis) in [
        ("999999999999", 999_999_999_999_000_u64),
        ("1000000000000", 1_000_000_000_000),
        ("0", 0),
        ("0001736942400", 1_736_942_400_000),
        ("9223372036854775807", i64::MAX.unsigned_abs()),
    ] {
        let sig = sign(SECRET_2, ts, BODY_2);
        let ok = verifier.verify_at(ts, &sig, BODY_2, at_ms(millis)).unwrap();
        assert_eq!(
            ok.signed_at(),
            Timestamp::from_millis(i64::try_from(millis).unwrap()),
            "{ts}"
        );
    }
}

// ---------------------------------------------------------------------------
// Signature text
// ---------------------------------------------------------------------------

#[test]
fn malformed_signatures_are_refused_as_such() {
    let verifier = Verifier::new(SECRET_2).unwrap();
    let now = at_ms(MS_2);
    for sig in [
        String::new(),
        SIG_2[..63].to_owned(),
        format!("{SIG_2}0"),
        format!("{}g", &SIG_2[..63]),
        format!("{}z{}", &SIG_2[..10], &SIG_2[11..]),
        format!("sha256={SIG_2}"),
        format!("v1,{SIG_2}"),
        SIG_2[..32].to_owned(),
        "é".repeat(32),
        "-".repeat(64),
    ] {
        assert_eq!(
            kind(verifier.verify_at(TS_2, &sig, BODY_2, now)),
            VerifyErrorKind::MalformedSignature,
            "{sig:?}"
        );
    }
    // Incremental form: refused at finish, with the same kind.
    let v = verifier.begin_at(TS_2, now).unwrap();
    assert_eq!(
        kind(v.finish(&SIG_2[..63])),
        VerifyErrorKind::MalformedSignature
    );
}

#[test]
fn uppercase_and_mixed_case_hex_are_accepted() {
    let verifier = Verifier::new(SECRET_2).unwrap();
    let now = at_ms(MS_2);
    let upper = SIG_2.to_uppercase();
    assert_ne!(upper, SIG_2);
    assert!(verifier.verify_at(TS_2, &upper, BODY_2, now).is_ok());
    let mixed: String = SIG_2
        .chars()
        .enumerate()
        .map(|(i, c)| {
            if i % 2 == 0 {
                c.to_ascii_uppercase()
            } else {
                c
            }
        })
        .collect();
    assert!(verifier.verify_at(TS_2, &mixed, BODY_2, now).is_ok());
}

#[test]
fn a_well_formed_wrong_signature_is_a_mismatch() {
    let verifier = Verifier::new(SECRET_2).unwrap();
    let now = at_ms(MS_2);
    for sig in [
        "0".repeat(64),
        "f".repeat(64),
        SIG_1.to_owned(),
        format!("{}{}", &SIG_2[..62], "00"),
        // Right first 32 bytes of hex, i.e. a truncated-compare attack.
        format!("{}{}", &SIG_2[..32], "0".repeat(32)),
    ] {
        assert_eq!(
            kind(verifier.verify_at(TS_2, &sig, BODY_2, now)),
            VerifyErrorKind::SignatureMismatch,
            "{sig}"
        );
    }
}

// ---------------------------------------------------------------------------
// Keys and rotation
// ---------------------------------------------------------------------------

#[test]
fn empty_secrets_are_configuration_errors() {
    const EMPTY_SECRET: &str = "empty signing secret: set it to the endpoint's signing secret from the Clink dashboard (whsec_...)";
    for error in [
        Verifier::new("").unwrap_err(),
        Verifier::new(String::new()).unwrap_err(),
        Verifier::new(Vec::<u8>::new()).unwrap_err(),
        SigningKey::new(b"").unwrap_err(),
    ] {
        assert_eq!(error.message(), EMPTY_SECRET);
        assert_eq!(
            error.to_string(),
            format!("invalid configuration: {EMPTY_SECRET}")
        );
    }
}

#[test]
fn non_utf8_secrets_are_used_as_bytes() {
    let secret = [0xff_u8, 0x00, 0x80, b'k'];
    let verifier = Verifier::new(secret).unwrap();
    let sig = sign(secret, TS_3, BODY_1);
    assert!(verifier.verify_at(TS_3, &sig, BODY_1, at_ms(MS_2)).is_ok());
}

#[test]
fn long_secrets_work() {
    // Longer than the SHA-256 block, so HMAC hashes the key first.
    let secret = "whsec_".repeat(40);
    let verifier = Verifier::new(&secret).unwrap();
    let sig = sign(&secret, TS_3, BODY_2);
    assert!(verifier.verify_at(TS_3, &sig, BODY_2, at_ms(MS_2)).is_ok());
    assert_eq!(
        kind(
            Verifier::new(&secret[..secret.len() - 1])
                .unwrap()
                .verify_at(TS_3, &sig, BODY_2, at_ms(MS_2))
        ),
        VerifyErrorKind::SignatureMismatch
    );
}

#[test]
fn rotation_accepts_both_keys_and_reports_which() {
    let now = at_ms(MS_2);
    let expiry = now + Duration::from_secs(86_400);
    let verifier = Verifier::new("whsec_new")
        .unwrap()
        .add_key(SigningKey::new("whsec_old").unwrap().expires_at(expiry));
    assert_eq!(verifier.key_count(), 2);

    let new = sign("whsec_new", TS_3, BODY_2);
    let old = sign("whsec_old", TS_3, BODY_2);
    assert_eq!(
        verifier
            .verify_at(TS_3, &new, BODY_2, now)
            .unwrap()
            .key_index(),
        0
    );
    assert_eq!(
        verifier
            .verify_at(TS_3, &old, BODY_2, now)
            .unwrap()
            .key_index(),
        1
    );
    let stranger = sign("whsec_stranger", TS_3, BODY_2);
    assert_eq!(
        kind(verifier.verify_at(TS_3, &stranger, BODY_2, now)),
        VerifyErrorKind::SignatureMismatch
    );
}

#[test]
fn an_expired_key_is_refused_from_its_expiry_on() {
    let signed = at_ms(MS_2);
    let expiry = signed + Duration::from_secs(60);
    let verifier = Verifier::new("whsec_new")
        .unwrap()
        .add_key(SigningKey::new("whsec_old").unwrap().expires_at(expiry));
    let old = sign("whsec_old", TS_3, BODY_2);
    let new = sign("whsec_new", TS_3, BODY_2);

    assert_eq!(
        verifier
            .verify_at(TS_3, &old, BODY_2, expiry - MS)
            .unwrap()
            .key_index(),
        1
    );
    // At and after the expiry, the old key no longer counts, while the new
    // one does; a signature by the old key is refused, and told from a
    // forgery for the operator.
    for now in [expiry, expiry + MS, expiry + Duration::from_secs(120)] {
        assert_eq!(
            kind(verifier.verify_at(TS_3, &old, BODY_2, now)),
            VerifyErrorKind::ExpiredKey
        );
        assert_eq!(
            verifier
                .verify_at(TS_3, &new, BODY_2, now)
                .unwrap()
                .key_index(),
            0
        );
    }
}

#[test]
fn key_index_counts_expired_keys_too() {
    let now = at_ms(MS_2);
    let gone = SigningKey::new("whsec_gone").unwrap().expires_at(now);
    assert_eq!(gone.expiry(), Some(now));
    let verifier = Verifier::from_key(&gone)
        .add_key(SigningKey::new("whsec_a").unwrap())
        .add_key(SigningKey::new("whsec_b").unwrap());
    let b = sign("whsec_b", TS_3, BODY_1);
    assert_eq!(
        verifier
            .verify_at(TS_3, &b, BODY_1, now)
            .unwrap()
            .key_index(),
        2
    );
    let g = sign("whsec_gone", TS_3, BODY_1);
    assert_eq!(
        kind(verifier.verify_at(TS_3, &g, BODY_1, now)),
        VerifyErrorKind::ExpiredKey
    );
}

#[test]
fn the_same_secret_twice_reports_the_first() {
    let verifier = Verifier::new("whsec_x")
        .unwrap()
        .add_key(SigningKey::new("whsec_y").unwrap())
        .add_key(SigningKey::new("whsec_x").unwrap());
    let sig = sign("whsec_x", TS_3, BODY_1);
    assert_eq!(
        verifier
            .verify_at(TS_3, &sig, BODY_1, at_ms(MS_2))
            .unwrap()
            .key_index(),
        0
    );
}

#[test]
fn many_keys_each_report_their_index() {
    let mut verifier = Verifier::new("k0").unwrap();
    for i in 1..8 {
        verifier = verifier.add_key(SigningKey::new(format!("k{i}")).unwrap());
    }
    for i in 0..8 {
        let sig = sign(format!("k{i}"), TS_3, BODY_1);
        assert_eq!(
            verifier
                .verify_at(TS_3, &sig, BODY_1, at_ms(MS_2))
                .unwrap()
                .key_index(),
            i
        );
    }
}

#[test]
fn all_keys_expired_is_no_active_key() {
    let now = at_ms(MS_2);
    let verifier = Verifier::from_key(&SigningKey::new("whsec_a").unwrap().expires_at(now))
        .add_key(SigningKey::new("whsec_b").unwrap().expires_at(now - MS));
    let sig = sign("whsec_a", TS_3, BODY_1);
    assert_eq!(
        kind(verifier.verify_at(TS_3, &sig, BODY_1, now)),
        VerifyErrorKind::NoActiveKey
    );
    assert_eq!(
        verifier.begin_at(TS_3, now).unwrap_err().kind(),
        VerifyErrorKind::NoActiveKey
    );
    // Just before the later expiry, key 0 still works.
    assert_eq!(
        verifier
            .verify_at(TS_3, &sig, BODY_1, now - MS)
            .unwrap()
            .key_index(),
        0
    );
}

#[test]
fn debug_output_redacts_secrets() {
    let key = SigningKey::new("whsec_supersecret_value").unwrap();
    let verifier = Verifier::from_key(&key).add_key(key.clone());
    let verification = verifier.begin_at(TS_3, at_ms(MS_2)).unwrap();
    for text in [
        format!("{key:?}"),
        format!("{verifier:?}"),
        format!("{verification:?}"),
    ] {
        assert!(!text.contains("supersecret"), "{text}");
    }
}

// ---------------------------------------------------------------------------
// Headers
// ---------------------------------------------------------------------------

const TS_H: HeaderName = HeaderName::from_static("x-clink-timestamp");
const SIG_H: HeaderName = HeaderName::from_static("x-clink-signature");
const TYPE_H: HeaderName = HeaderName::from_static("x-clink-signtype");

fn headers(ts: Option<&str>, sig: Option<&str>, sign_type: Option<&str>) -> HeaderMap {
    let mut map = HeaderMap::new();
    if let Some(ts) = ts {
        map.insert(TS_H, HeaderValue::from_str(ts).unwrap());
    }
    if let Some(sig) = sig {
        map.insert(SIG_H, HeaderValue::from_str(sig).unwrap());
    }
    if let Some(t) = sign_type {
        map.insert(TYPE_H, HeaderValue::from_str(t).unwrap());
    }
    map
}

#[test]
fn headers_verify_like_the_plain_entry_point() {
    let verifier = Verifier::new(SECRET_2).unwrap();
    let now = at_ms(MS_2);
    let ok = verifier
        .verify_headers_at(&headers(Some(TS_2), Some(SIG_2), None), BODY_2, now)
        .unwrap();
    assert_eq!(ok, verifier.verify_at(TS_2, SIG_2, BODY_2, now).unwrap());

    let body_3 = body_3();
    assert!(verifier
        .verify_headers_at(&headers(Some(TS_3), Some(SIG_3), None), &body_3, now)
        .is_ok());
    assert_eq!(
        kind(verifier.verify_headers_at(&headers(Some(TS_3), Some(SIG_2), None), BODY_2, now)),
        VerifyErrorKind::SignatureMismatch
    );
    // Header names are case-insensitive on the wire.
    let mut map = HeaderMap::new();
    map.insert(
        HeaderName::from_bytes(b"X-Clink-Timestamp").unwrap(),
        HeaderValue::from_static(TS_2),
    );
    map.insert(
        HeaderName::from_bytes(b"X-CLINK-SIGNATURE").unwrap(),
        HeaderValue::from_static(SIG_2),
    );
    assert!(verifier.verify_headers_at(&map, BODY_2, now).is_ok());
}

#[test]
fn missing_headers_are_named() {
    let verifier = Verifier::new(SECRET_2).unwrap();
    let now = at_ms(MS_2);
    for (map, expected) in [
        (
            headers(None, Some(SIG_2), None),
            VerifyErrorKind::MissingTimestamp,
        ),
        (
            headers(Some(TS_2), None, None),
            VerifyErrorKind::MissingSignature,
        ),
        (headers(None, None, None), VerifyErrorKind::MissingTimestamp),
        (
            headers(None, None, Some("SHA256")),
            VerifyErrorKind::MissingTimestamp,
        ),
    ] {
        let err = verifier.verify_headers_at(&map, BODY_2, now).unwrap_err();
        assert_eq!(err.kind(), expected);
        assert!(err.kind().is_malformed_request());
    }
}

#[test]
fn sign_type_must_be_sha256_in_any_case() {
    let verifier = Verifier::new(SECRET_2).unwrap();
    let now = at_ms(MS_2);
    for ok in ["SHA256", "sha256", "Sha256", " SHA256 "] {
        assert!(
            verifier
                .verify_headers_at(&headers(Some(TS_2), Some(SIG_2), Some(ok)), BODY_2, now)
                .is_ok(),
            "{ok:?}"
        );
    }
    for bad in ["MD5", "SHA1", "SHA-256", "SHA512", "HMAC-SHA256", ""] {
        assert_eq!(
            kind(verifier.verify_headers_at(
                &headers(Some(TS_2), Some(SIG_2), Some(bad)),
                BODY_2,
                now
            )),
            VerifyErrorKind::UnsupportedSignType,
            "{bad:?}"
        );
    }
}

#[test]
fn duplicated_headers_are_malformed() {
    let verifier = Verifier::new(SECRET_2).unwrap();
    let now = at_ms(MS_2);

    let mut map = headers(Some(TS_2), Some(SIG_2), None);
    map.append(TS_H, HeaderValue::from_static(TS_2));
    assert_eq!(
        kind(verifier.verify_headers_at(&map, BODY_2, now)),
        VerifyErrorKind::MalformedTimestamp
    );

    // Even when one of the two copies is right, the receiver must not pick.
    let mut map = headers(Some(TS_2), Some(SIG_2), None);
    map.append(SIG_H, HeaderValue::from_static(SIG_1));
    assert_eq!(
        kind(verifier.verify_headers_at(&map, BODY_2, now)),
        VerifyErrorKind::MalformedSignature
    );
    let mut map = headers(Some(TS_2), Some(SIG_2), None);
    map.append(SIG_H, HeaderValue::from_static(SIG_2));
    assert_eq!(
        kind(verifier.verify_headers_at(&map, BODY_2, now)),
        VerifyErrorKind::MalformedSignature
    );

    let mut map = headers(Some(TS_2), Some(SIG_2), Some("SHA256"));
    map.append(TYPE_H, HeaderValue::from_static("SHA256"));
    assert_eq!(
        kind(verifier.verify_headers_at(&map, BODY_2, now)),
        VerifyErrorKind::UnsupportedSignType
    );
}

#[test]
fn non_ascii_header_values_are_malformed() {
    let verifier = Verifier::new(SECRET_2).unwrap();
    let now = at_ms(MS_2);
    let mut map = headers(None, Some(SIG_2), None);
    map.insert(TS_H, HeaderValue::from_bytes(b"17369424\xff0").unwrap());
    assert_eq!(
        kind(verifier.verify_headers_at(&map, BODY_2, now)),
        VerifyErrorKind::MalformedTimestamp
    );
    let mut map = headers(Some(TS_2), None, None);
    map.insert(SIG_H, HeaderValue::from_bytes(&[0xe9; 64]).unwrap());
    assert_eq!(
        kind(verifier.verify_headers_at(&map, BODY_2, now)),
        VerifyErrorKind::MalformedSignature
    );
}

#[test]
fn header_problems_come_before_freshness_and_keys() {
    let now = at_ms(MS_2);
    let stale = now + Duration::from_secs(3600);
    let verifier = Verifier::new(SECRET_2).unwrap();
    assert_eq!(
        kind(verifier.verify_headers_at(&headers(Some(TS_2), Some("nope"), None), BODY_2, stale)),
        VerifyErrorKind::MalformedSignature
    );
    assert_eq!(
        kind(verifier.verify_headers_at(&headers(Some(TS_2), Some(SIG_2), None), BODY_2, stale)),
        VerifyErrorKind::TooOld
    );
}

// ---------------------------------------------------------------------------
// Incremental form
// ---------------------------------------------------------------------------

fn incremental(
    verifier: &Verifier, ts: &str, chunks: &[&[u8]], sig: &str, now: SystemTime,
) -> Result<Verified, VerifyError> {
    let mut v = verifier.begin_at(ts, now)?;
    for chunk in chunks {
        v.update(chunk);
    }
    v.finish(sig)
}

#[test]
fn incremental_matches_one_shot_at_every_split() {
    let now = at_ms(MS_2);
    let verifier = Verifier::new("whsec_old")
        .unwrap()
        .add_key(SigningKey::new(SECRET_3).unwrap());
    let body = body_3();
    let one_shot = verifier.verify_at(TS_3, SIG_3, &body, now).unwrap();
    assert_eq!(one_shot.key_index(), 1);
    for i in 0..=body.len() {
        let (a, b) = body.split_at(i);
        assert_eq!(
            incremental(&verifier, TS_3, &[a, b], SIG_3, now),
            Ok(one_shot.clone()),
            "split at {i}"
        );
        assert_eq!(
            incremental(&verifier, TS_3, &[a, b], SIG_3_NO_LF, now).map_err(|e| e.kind()),
            Err(VerifyErrorKind::SignatureMismatch),
            "split at {i}"
        );
        for j in i..=body.len() {
            let (b, c) = body[i..].split_at(j - i);
            assert_eq!(
                incremental(&verifier, TS_3, &[a, &[], b, c], SIG_3, now),
                Ok(one_shot.clone()),
                "split at {i} and {j}"
            );
        }
    }
    let bytes: Vec<&[u8]> = body.chunks(1).collect();
    assert_eq!(
        incremental(&verifier, TS_3, &bytes, SIG_3, now),
        Ok(one_shot)
    );
    // Feeding the body twice, or not at all, is a different body.
    assert!(incremental(&verifier, TS_3, &[&body, &body], SIG_3, now).is_err());
    assert!(incremental(&verifier, TS_3, &[], SIG_3, now).is_err());
}

#[test]
fn incremental_checks_the_timestamp_before_any_body() {
    let verifier = Verifier::new(SECRET_2).unwrap();
    let now = at_ms(MS_2);
    let v = verifier.begin_at(TS_2, now).unwrap();
    assert_eq!(v.signed_at().as_millis(), 1_736_942_400_000);
    assert_eq!(
        verifier
            .begin_at(TS_2, now + Duration::from_secs(301))
            .unwrap_err()
            .kind(),
        VerifyErrorKind::TooOld
    );
    assert_eq!(
        verifier
            .begin_at(TS_2, now - Duration::from_secs(301))
            .unwrap_err()
            .kind(),
        VerifyErrorKind::InFuture
    );
    assert_eq!(
        verifier.begin_at("", now).unwrap_err().kind(),
        VerifyErrorKind::MalformedTimestamp
    );
}

// ---------------------------------------------------------------------------
// What errors say
// ---------------------------------------------------------------------------

/// Every 10-character window of `secret_text`, so that a partial leak fails too.
fn leaks(message: &str, secret_text: &str) -> bool {
    let lower = message.to_ascii_lowercase();
    let needle = secret_text.to_ascii_lowercase();
    if needle.len() <= 10 {
        return lower.contains(&needle);
    }
    needle
        .as_bytes()
        .windows(10)
        .any(|w| lower.contains(std::str::from_utf8(w).unwrap()))
}

#[test]
fn errors_never_show_the_secret_or_the_expected_signature() {
    let secret = "whsec_Zq8rT2mXv9LkPw4N";
    let now = at_ms(MS_2);
    let verifier = Verifier::new(secret).unwrap().add_key(
        SigningKey::new("whsec_expired_Y7uJ3k")
            .unwrap()
            .expires_at(now),
    );
    let expected = sign(secret, TS_3, BODY_2);
    let wrong = sign("whsec_wrong", TS_3, BODY_2);
    let expired_only = Verifier::from_key(&SigningKey::new(secret).unwrap().expires_at(now));

    let errors = [
        verifier.verify_at(TS_3, &wrong, BODY_2, now),
        verifier.verify_at(TS_3, &expected, BODY_1, now),
        verifier.verify_at(TS_3, &expected[..63], BODY_2, now),
        verifier.verify_at("x", &expected, BODY_2, now),
        verifier.verify_at(TS_3, &expected, BODY_2, now + Duration::from_secs(999)),
        verifier.verify_at(TS_3, &expected, BODY_2, now - Duration::from_secs(999)),
        expired_only.verify_at(TS_3, &expected, BODY_2, now),
        verifier.verify_headers_at(&headers(None, Some(&wrong), None), BODY_2, now),
        verifier.verify_headers_at(&headers(Some(TS_3), None, None), BODY_2, now),
        verifier.verify_headers_at(&headers(Some(TS_3), Some(&wrong), Some("MD5")), BODY_2, now),
    ];
    let mut kinds = std::collections::HashSet::new();
    for result in errors {
        let err = result.unwrap_err();
        kinds.insert(err.kind());
        for text in [err.to_string(), format!("{err:?}")] {
            assert!(!text.is_empty());
            assert!(!leaks(&text, secret), "secret in {text:?}");
            assert!(!leaks(&text, "Y7uJ3k"), "expired secret in {text:?}");
            assert!(!leaks(&text, &expected), "expected signature in {text:?}");
        }
    }
    // Every kind of refusal was exercised above.
    assert_eq!(kinds.len(), 9, "{kinds:?}");
    // The checker itself can fail: a message that does contain them is caught.
    assert!(leaks(&format!("got {}", &expected[20..31]), &expected));
    assert!(leaks(&format!("key={secret}"), secret));
}

#[test]
fn mismatch_message_says_what_to_check() {
    let verifier = Verifier::new(SECRET_2).unwrap();
    let err = verifier
        .verify_at(TS_2, SIG_1, BODY_2, at_ms(MS_2))
        .unwrap_err();
    assert_eq!(err.kind().code(), "signature_mismatch");
    assert!(!err.kind().is_malformed_request());
    let text = err.to_string();
    assert!(text.contains("signing secret"), "{text}");
    assert!(text.contains("raw body"), "{text}");
}

// ---------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------

/// A timestamp header value and the instant it denotes, in ms. Covers both
/// units, leading zeros and surrounding whitespace.
fn timestamp_text() -> impl Strategy<Value = (String, u64)> {
    (
        prop_oneof![
            0u64..1_000_000_000_000,
            1_000_000_000_000u64..=i64::MAX.unsigned_abs(),
            1_600_000_000u64..1_900_000_000,
            1_600_000_000_000u64..1_900_000_000_000,
        ],
        0usize..3,
        prop_oneof![Just(""), Just(" "), Just("\t")],
    )
        .prop_map(|(value, zeros, pad)| {
            let millis = if value < 1_000_000_000_000 {
                value * 1000
            } else {
                value
            };
            (format!("{pad}{}{value}{pad}", "0".repeat(zeros)), millis)
        })
}

fn secret() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 1..160)
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..2048)
}

/// The randomised tests (`seeded` in their path); `CLINK_TEST_SEED` repeats a run.
mod seeded {
    use super::*;

    proptest! {
        #![proptest_config(crate::support::seed::config())]

        #[test]
        fn sign_then_verify_round_trips(
            secret in secret(),
            body in body(),
            (ts, millis) in timestamp_text(),
        ) {
            let verifier = Verifier::new(&secret).unwrap();
            let sig = sign(&secret, &ts, &body);
            prop_assert_eq!(sig.len(), 64);
            prop_assert!(sig.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
            let ok = verifier.verify_at(&ts, &sig, &body, at_ms(millis)).unwrap();
            prop_assert_eq!(ok.key_index(), 0);
            prop_assert_eq!(ok.signed_at().as_millis().unsigned_abs(), millis);
            // Also through the headers, when the text is a valid header value.
            if let Ok(value) = HeaderValue::from_str(&ts) {
                let mut map = headers(None, Some(&sig), Some("SHA256"));
                map.insert(TS_H, value);
                prop_assert_eq!(verifier.verify_headers_at(&map, &body, at_ms(millis)), Ok(ok));
            }
        }

        #[test]
        fn flipping_a_body_bit_fails(
            secret in secret(),
            body in proptest::collection::vec(any::<u8>(), 1..2048),
            (ts, millis) in timestamp_text(),
            index in any::<prop::sample::Index>(),
            bit in 0u8..8,
        ) {
            let verifier = Verifier::new(&secret).unwrap();
            let sig = sign(&secret, &ts, &body);
            let mut tampered = body.clone();
            tampered[index.index(body.len())] ^= 1 << bit;
            prop_assert_eq!(
                kind(verifier.verify_at(&ts, &sig, &tampered, at_ms(millis))),
                VerifyErrorKind::SignatureMismatch
            );
        }

        #[test]
        fn flipping_a_timestamp_bit_fails(
            secret in secret(),
            body in body(),
            (ts, millis) in timestamp_text(),
            index in any::<prop::sample::Index>(),
            bit in 0u8..8,
        ) {
            let verifier = Verifier::new(&secret).unwrap();
            let sig = sign(&secret, &ts, &body);
            let mut bytes = ts.clone().into_bytes();
            bytes[index.index(ts.len())] ^= 1 << bit;
            // Whether the flip makes the text malformed, moves it outside the
            // window or keeps it inside, it must never verify.
            match String::from_utf8(bytes) {
                Ok(flipped) => {
                    prop_assert!(verifier.verify_at(&flipped, &sig, &body, at_ms(millis)).is_err());
                }
                Err(err) => {
                    let mut map = headers(None, Some(&sig), None);
                    map.insert(TS_H, HeaderValue::from_bytes(err.as_bytes()).unwrap());
                    prop_assert_eq!(
                        kind(verifier.verify_headers_at(&map, &body, at_ms(millis))),
                        VerifyErrorKind::MalformedTimestamp
                    );
                }
            }
        }

        #[test]
        fn flipping_a_signature_bit_fails(
            secret in secret(),
            body in body(),
            (ts, millis) in timestamp_text(),
            index in 0usize..32,
            bit in 0u8..8,
        ) {
            let verifier = Verifier::new(&secret).unwrap();
            let mut raw = hex::decode(sign(&secret, &ts, &body)).unwrap();
            raw[index] ^= 1 << bit;
            prop_assert_eq!(
                kind(verifier.verify_at(&ts, &hex::encode(&raw), &body, at_ms(millis))),
                VerifyErrorKind::SignatureMismatch
            );
        }

        #[test]
        fn flipping_a_signature_text_bit_fails_unless_it_only_changes_case(
            secret in secret(),
            body in body(),
            index in 0usize..64,
            bit in 0u8..8,
        ) {
            let verifier = Verifier::new(&secret).unwrap();
            let sig = sign(&secret, TS_3, &body);
            let mut bytes = sig.into_bytes();
            let original = bytes[index];
            bytes[index] ^= 1 << bit;
            let flipped = bytes[index];
            let now = at_ms(MS_2);
            match String::from_utf8(bytes) {
                Ok(text) => {
                    let result = verifier.verify_at(TS_3, &text, &body, now);
                    if original.is_ascii_alphabetic() && flipped == original.to_ascii_uppercase() {
                        // `a`..`f` to `A`..`F`: the same signature in upper case.
                        prop_assert!(result.is_ok());
                    } else if flipped.is_ascii_hexdigit() {
                        prop_assert_eq!(kind(result), VerifyErrorKind::SignatureMismatch);
                    } else {
                        prop_assert_eq!(kind(result), VerifyErrorKind::MalformedSignature);
                    }
                }
                Err(err) => {
                    let mut map = headers(Some(TS_3), None, None);
                    map.insert(SIG_H, HeaderValue::from_bytes(err.as_bytes()).unwrap());
                    prop_assert_eq!(
                        kind(verifier.verify_headers_at(&map, &body, now)),
                        VerifyErrorKind::MalformedSignature
                    );
                }
            }
        }

        #[test]
        fn incremental_matches_one_shot(
            secret in secret(),
            body in proptest::collection::vec(any::<u8>(), 0..300),
            right in any::<bool>(),
        ) {
            let verifier = Verifier::new(&secret).unwrap();
            let sig = if right { sign(&secret, TS_3, &body) } else { SIG_3.to_owned() };
            let now = at_ms(MS_2);
            let one_shot = verifier.verify_at(TS_3, &sig, &body, now);
            prop_assert_eq!(one_shot.is_ok(), right);
            for i in 0..=body.len() {
                let (a, b) = body.split_at(i);
                prop_assert_eq!(incremental(&verifier, TS_3, &[a, b], &sig, now), one_shot.clone());
            }
        }
    }
}
