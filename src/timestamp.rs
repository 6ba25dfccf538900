//! [`Timestamp`]: a point in time at millisecond precision, as Clink sends them.
//!
//! Clink writes times in two ways: epoch milliseconds (`createTime`,
//! `paymentTime`, and `created` in newer payloads) and RFC 3339 strings
//! (`created` in older payloads, session `expire`). Both decode into the same
//! type, so a handler never cares which one arrived.
//!
//! ```
//! use clink_webhooks::Timestamp;
//!
//! let a: Timestamp = serde_json::from_str("1736942400000").unwrap();
//! let b: Timestamp = serde_json::from_str(r#""2025-01-15T12:00:00.000Z""#).unwrap();
//! assert_eq!(a, b);
//! assert_eq!(a.as_millis(), 1_736_942_400_000);
//! assert_eq!(a.to_string(), "2025-01-15T12:00:00.000Z");
//! ```
//!
//! Epoch milliseconds must be a JSON integer (or a string of digits):
//! `1736942400000.5` is an error rather than a rounded instant, and so is
//! `1736942400000.0`. `serde_json` hands a number with a fraction or an
//! exponent to the reader as an `f64`, whose text is gone by then, so no such
//! number can be told apart from its neighbours; none is accepted.
//!
//! Every value reads back from what it writes: [`Display`](fmt::Display) and
//! serialization give RFC 3339 for years 0000 to 9999 and the epoch
//! milliseconds in signed digits outside them (serialized as a JSON
//! string, `"253402300800000"`), and [`FromStr`] and deserialization read
//! both.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// A point in time, in whole milliseconds since the Unix epoch (UTC).
///
/// Ordered, hashable and cheap to copy. Deserializes from an integer of epoch
/// milliseconds, a string of digits (epoch milliseconds, optionally negative),
/// or an RFC 3339 string; serializes as its [`Display`](fmt::Display) text, an
/// RFC 3339 string with milliseconds for years 0000 to 9999. Every value
/// round-trips through `to_string`/[`FromStr`] and through serde.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    /// The timestamp `millis` milliseconds after the Unix epoch (negative is before).
    #[must_use]
    pub const fn from_millis(millis: i64) -> Self {
        Self(millis)
    }

    /// Milliseconds since the Unix epoch.
    #[must_use]
    pub const fn as_millis(self) -> i64 {
        self.0
    }

    /// The current time, truncated to the millisecond.
    #[must_use]
    pub fn now() -> Self {
        let now = Self::from_system_time(SystemTime::now());
        #[cfg(test)]
        let now = Self(
            now.0
                .saturating_add(test_clock::SKEW_MS.with(std::cell::Cell::get)),
        );
        now
    }

    /// Converts a [`SystemTime`], rounding down to the millisecond (towards
    /// the past, before 1970 as after, as [`parse_rfc3339`](Self::parse_rfc3339)
    /// does) and saturating at the ends of the `i64` range.
    #[must_use]
    pub fn from_system_time(t: SystemTime) -> Self {
        let millis = match t.duration_since(UNIX_EPOCH) {
            Ok(after) => i64::try_from(after.as_millis()).unwrap_or(i64::MAX),
            Err(before) => {
                let before = before.duration();
                // A part of a millisecond before the epoch is one more
                // millisecond into the past.
                let part = u128::from(before.subsec_nanos() % 1_000_000 != 0);
                i64::try_from(before.as_millis() + part)
                    .map(|m| -m)
                    .unwrap_or(i64::MIN)
            }
        };
        Self(millis)
    }

    /// This timestamp as a [`SystemTime`], held to what the platform's
    /// clock can hold (every `i64` of milliseconds on Linux and macOS; on
    /// Windows, a time past the year 9999 reads as its end, one before 1601
    /// as 1601), never a panic.
    #[must_use]
    pub fn to_system_time(self) -> SystemTime {
        let offset = Duration::from_millis(self.0.unsigned_abs());
        if self.0 >= 0 {
            UNIX_EPOCH
                .checked_add(offset)
                .or_else(|| UNIX_EPOCH.checked_add(Duration::from_secs(253_402_300_799)))
                .unwrap_or(UNIX_EPOCH)
        } else {
            UNIX_EPOCH
                .checked_sub(offset)
                .or_else(|| UNIX_EPOCH.checked_sub(Duration::from_secs(11_644_473_600)))
                .unwrap_or(UNIX_EPOCH)
        }
    }

    /// Parses an RFC 3339 date-time such as `2025-01-15T12:00:00.000Z`.
    ///
    /// # Errors
    ///
    /// Returns [`TimestampParseError`] when `s` is not RFC 3339 or lies outside
    /// the range of epoch milliseconds in an `i64`.
    pub fn parse_rfc3339(s: &str) -> Result<Self, TimestampParseError> {
        let parsed = OffsetDateTime::parse(s, &Rfc3339).map_err(|_| TimestampParseError)?;
        // Truncate towards the past, on both sides of the epoch.
        let millis = parsed.unix_timestamp_nanos().div_euclid(1_000_000);
        i64::try_from(millis)
            .map(Self)
            .map_err(|_| TimestampParseError)
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Timestamp({self})")
    }
}

/// Formats as RFC 3339 in UTC with milliseconds, e.g. `2025-01-15T12:00:00.000Z`,
/// for years 0000 to 9999 (RFC 3339 has four-digit years); outside them, as
/// the epoch milliseconds, e.g. `253402300800000` or `-62167219200001`.
/// [`FromStr`] reads either back to the same value.
impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nanos = i128::from(self.0) * 1_000_000;
        match OffsetDateTime::from_unix_timestamp_nanos(nanos) {
            Ok(dt) if (0..=9999).contains(&dt.year()) => write!(
                f,
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
                dt.year(),
                u8::from(dt.month()),
                dt.day(),
                dt.hour(),
                dt.minute(),
                dt.second(),
                dt.millisecond()
            ),
            _ => write!(f, "{}", self.0),
        }
    }
}

/// Reads what [`Display`](fmt::Display) writes, and what Clink sends as a
/// string: an RFC 3339 date-time, or epoch milliseconds as an integer with an
/// optional `-` (no `+`, no spaces).
impl FromStr for Timestamp {
    type Err = TimestampParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let digits = s.strip_prefix('-').unwrap_or(s);
        if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
            return s.parse::<i64>().map(Self).map_err(|_| TimestampParseError);
        }
        Self::parse_rfc3339(s)
    }
}

impl From<SystemTime> for Timestamp {
    fn from(t: SystemTime) -> Self {
        Self::from_system_time(t)
    }
}

impl From<Timestamp> for SystemTime {
    fn from(t: Timestamp) -> Self {
        t.to_system_time()
    }
}

/// The error from [`Timestamp::parse_rfc3339`] and [`Timestamp::from_str`]:
/// the text is not an RFC 3339 date-time (or, for `from_str`, epoch
/// milliseconds) within range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimestampParseError;

impl fmt::Display for TimestampParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("not an RFC 3339 date-time (expected e.g. 2025-01-15T12:00:00.000Z)")
    }
}

impl std::error::Error for TimestampParseError {}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl Timestamp {
    /// What a JSON string holding a time reads as: epoch milliseconds in
    /// digits, or an RFC 3339 date-time.
    pub(crate) fn from_json_str<E: de::Error>(v: &str) -> Result<Self, E> {
        let digits = v.strip_prefix('-').unwrap_or(v);
        if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
            return v
                .parse::<i64>()
                .map(Timestamp)
                .map_err(|_| E::custom("epoch milliseconds out of range"));
        }
        Timestamp::parse_rfc3339(v).map_err(E::custom)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TimestampVisitor;

        impl Visitor<'_> for TimestampVisitor {
            type Value = Timestamp;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("epoch milliseconds or an RFC 3339 date-time")
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Timestamp, E> {
                Ok(Timestamp(v))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Timestamp, E> {
                i64::try_from(v)
                    .map(Timestamp)
                    .map_err(|_| E::custom("epoch milliseconds out of range"))
            }

            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Timestamp, E> {
                // The number's text is gone: `1736942400000.0000001` and
                // `1736942400000.0` arrive as the same `f64`. Refuse them all
                // rather than guess.
                Err(E::custom(
                    "epoch milliseconds must be written as an integer, without a fraction or exponent",
                ))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Timestamp, E> {
                Timestamp::from_json_str(v)
            }
        }

        deserializer.deserialize_any(TimestampVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_wire_forms_decode_to_the_same_instant() {
        let ms: Timestamp = serde_json::from_str("1750062041000").unwrap();
        let text: Timestamp = serde_json::from_str(r#""2025-06-16T08:20:41Z""#).unwrap();
        let digits: Timestamp = serde_json::from_str(r#""1750062041000""#).unwrap();
        assert_eq!(ms, text);
        assert_eq!(ms, digits);
    }

    #[test]
    fn offsets_are_normalised_to_utc() {
        let t: Timestamp = serde_json::from_str(r#""2025-01-15T13:00:00.250+01:00""#).unwrap();
        assert_eq!(t.to_string(), "2025-01-15T12:00:00.250Z");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [
            r#""yesterday""#,
            r#""""#,
            "true",
            "1.5",
            "18446744073709551615",
        ] {
            assert!(serde_json::from_str::<Timestamp>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn fractional_and_exponent_millis_are_refused() {
        for bad in [
            "1736942400000.0000001",
            "7277777777777777.0",
            "1736942400000.0",
            "1.7369424e12",
            "1e3",
            "-0.0",
        ] {
            assert!(serde_json::from_str::<Timestamp>(bad).is_err(), "{bad}");
        }
        assert_eq!(
            serde_json::from_str::<Timestamp>("7277777777777777")
                .unwrap()
                .as_millis(),
            7_277_777_777_777_777
        );
    }

    #[test]
    fn display_reads_back_outside_four_digit_years() {
        for (ms, text) in [
            (-62_167_219_200_001, "-62167219200001"),
            (-62_167_219_200_000, "0000-01-01T00:00:00.000Z"),
            (253_402_300_799_999, "9999-12-31T23:59:59.999Z"),
            (253_402_300_800_000, "253402300800000"),
            (i64::MIN, "-9223372036854775808"),
            (i64::MAX, "9223372036854775807"),
        ] {
            let t = Timestamp::from_millis(ms);
            assert_eq!(t.to_string(), text);
            assert_eq!(text.parse::<Timestamp>(), Ok(t), "{text}");
            let json = serde_json::to_string(&t).unwrap();
            assert_eq!(
                serde_json::from_str::<Timestamp>(&json).unwrap(),
                t,
                "{json}"
            );
        }
    }

    /// The randomised tests (`seeded` in their path); `CLINK_TEST_SEED` repeats a run.
    mod seeded {
        use super::*;

        proptest::proptest! {
            #![proptest_config(crate::test_seed::config())]

            #[test]
            fn every_timestamp_round_trips(ms in proptest::prelude::any::<i64>()) {
                let t = Timestamp::from_millis(ms);
                proptest::prop_assert_eq!(t.to_string().parse::<Timestamp>(), Ok(t));
                let json = serde_json::to_string(&t).unwrap();
                proptest::prop_assert_eq!(serde_json::from_str::<Timestamp>(&json).unwrap(), t);
            }

            #[test]
            fn calendar_timestamps_round_trip(ms in -62_167_219_200_000i64..=253_402_300_799_999) {
                let t = Timestamp::from_millis(ms);
                let text = t.to_string();
                proptest::prop_assert!(text.ends_with('Z'), "{}", text);
                proptest::prop_assert_eq!(Timestamp::parse_rfc3339(&text), Ok(t));
            }
        }
    }

    #[test]
    fn debug_and_errors_say_what_they_are() {
        let t = Timestamp::from_millis(1_736_942_400_000);
        assert_eq!(format!("{t:?}"), "Timestamp(2025-01-15T12:00:00.000Z)");
        let err = "yesterday".parse::<Timestamp>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "not an RFC 3339 date-time (expected e.g. 2025-01-15T12:00:00.000Z)"
        );
        let err = serde_json::from_str::<Timestamp>("true").unwrap_err();
        assert!(
            err.to_string()
                .contains("expected epoch milliseconds or an RFC 3339 date-time"),
            "{err}"
        );
        let err = serde_json::from_str::<Timestamp>(r#""9223372036854775808""#).unwrap_err();
        assert!(err.to_string().contains("out of range"), "{err}");
    }

    #[test]
    fn system_time_round_trips_on_both_sides_of_the_epoch() {
        for ms in [0, 1, -1, 1_736_942_400_123, -86_400_000] {
            let t = Timestamp::from_millis(ms);
            assert_eq!(Timestamp::from_system_time(t.to_system_time()), t);
        }
    }

    /// A time between two milliseconds reads as the earlier, before 1970
    /// as after, and as the same instant written in RFC 3339 does.
    #[test]
    fn a_part_of_a_millisecond_rounds_towards_the_past() {
        use std::time::Duration;
        let at = |micros: i64| {
            let offset = Duration::from_micros(micros.unsigned_abs());
            let t = if micros < 0 {
                UNIX_EPOCH - offset
            } else {
                UNIX_EPOCH + offset
            };
            Timestamp::from_system_time(t).as_millis()
        };
        assert_eq!(at(1_500), 1);
        assert_eq!(at(-1_500), -2);
        assert_eq!(at(-1_000), -1);
        assert_eq!(at(-1), -1);
        let written = Timestamp::parse_rfc3339("1969-12-31T23:59:59.9985Z").unwrap();
        assert_eq!(written.as_millis(), at(-1_500));
        let far = UNIX_EPOCH - Duration::from_nanos(1) - Duration::from_millis(i64::MAX as u64);
        assert_eq!(Timestamp::from_system_time(far).as_millis(), i64::MIN);
    }
}

/// The crate's own tests play an app whose clock is off: on this thread,
/// [`Timestamp::now`] is `SKEW_MS` from the system's clock.
#[cfg(test)]
pub(crate) mod test_clock {
    thread_local! {
        pub(crate) static SKEW_MS: std::cell::Cell<i64> = const { std::cell::Cell::new(0) };
    }

    /// From now on, on this thread, the clock is `skew_ms` off.
    pub(crate) fn skew(skew_ms: i64) {
        SKEW_MS.with(|skew| skew.set(skew_ms));
    }
}
