//! Field types shared by several families: amounts, currencies, metadata,
//! price lines, and the string enums' machinery.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use rust_decimal::Decimal;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value};

use super::Text;

/// Defines a string enum whose unknown values decode into `Unknown(String)`
/// instead of failing, with `as_str`, `Display`, `From<&str>` and serde
/// impls that write back exactly the wire value.
macro_rules! string_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $wire:literal, )+
        }
    ) => {
        $(#[$meta])*
        ///
        /// Values this version of the crate does not know decode into
        #[doc = concat!("[`Unknown`](", stringify!($name), "::Unknown).")]
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum $name {
            $(
                $(#[$vmeta])*
                #[doc = ""]
                #[doc = concat!("Sent as `", $wire, "`.")]
                $variant,
            )+
            /// A value this version of the crate does not know, kept as sent.
            ///
            /// Build values with `From<&str>`, which never puts a known value here.
            Unknown(String),
        }

        impl $name {
            /// The value as Clink sends it.
            #[must_use]
            pub fn as_str(&self) -> &str {
                match self {
                    $( Self::$variant => $wire, )+
                    Self::Unknown(other) => other,
                }
            }
        }

        impl From<&str> for $name {
            fn from(value: &str) -> Self {
                match value {
                    $( $wire => Self::$variant, )+
                    other => Self::Unknown(other.to_owned()),
                }
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ::serde::Serialize for $name {
            fn serialize<S: ::serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $name {
            fn deserialize<D: ::serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                $crate::data::common::deserialize_str_into(deserializer)
            }
        }
    };
}
pub(crate) use string_enum;

/// Deserializes a string into `T` through `From<&str>`, borrowing where the
/// input allows so that known values cost no allocation.
pub(crate) fn deserialize_str_into<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: for<'a> From<&'a str>,
{
    struct StrVisitor<T>(PhantomData<T>);

    impl<T: for<'a> From<&'a str>> Visitor<'_> for StrVisitor<T> {
        type Value = T;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string")
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
            Ok(T::from(v))
        }
    }

    deserializer.deserialize_str(StrVisitor(PhantomData))
}

/// Serde helpers for an optional time in an event's data, for
/// `#[serde(default, with = "time")]`: epoch milliseconds (a number, or
/// digits in a string), an RFC 3339 date-time, `null`, or an empty string,
/// which Clink's optional fields may carry for "absent" (as amounts read
/// it), read as `None` rather than refusing the whole event. So is a
/// number or a string this crate cannot read as a time (a date-time
/// without its offset, `2025-01-15T12:00:00`, whose zone nobody can tell;
/// milliseconds with a fraction; a time past the year range): one field
/// written in another form must not make a whole event undecodable, which
/// Clink would retry for a day and give up on. The raw body keeps what was
/// sent. An object, an array or a boolean is still an error. Written as
/// [`Timestamp`](crate::Timestamp) writes itself.
///
/// ```
/// use clink_webhooks::data::Order;
///
/// let order: Order = serde_json::from_str(r#"{"createTime":1736942400000,"paymentTime":""}"#)?;
/// assert!(order.create_time.is_some());
/// assert_eq!(order.payment_time, None);
/// // A date-time without its offset: not read, and not refused.
/// let order: Order = serde_json::from_str(r#"{"paymentTime":"2025-01-15T12:00:00"}"#)?;
/// assert_eq!(order.payment_time, None);
/// # Ok::<(), serde_json::Error>(())
/// ```
pub mod time {
    use std::fmt;

    use serde::de::{Error, Visitor};
    use serde::{Deserializer, Serialize, Serializer};

    use crate::Timestamp;

    /// Reads an optional time; see the [module docs](self).
    ///
    /// # Errors
    ///
    /// When the value is an object, an array or a boolean.
    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Timestamp>, D::Error> {
        struct OptionalTime;

        impl Visitor<'_> for OptionalTime {
            type Value = Option<Timestamp>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("epoch milliseconds, an RFC 3339 date-time, null or \"\"")
            }

            fn visit_unit<E: Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }

            fn visit_none<E: Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }

            fn visit_i64<E: Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Some(Timestamp::from_millis(v)))
            }

            fn visit_u64<E: Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(i64::try_from(v).ok().map(Timestamp::from_millis))
            }

            fn visit_f64<E: Error>(self, _: f64) -> Result<Self::Value, E> {
                // The number's text is gone: not read as a time.
                Ok(None)
            }

            fn visit_str<E: Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Timestamp::from_json_str::<E>(v).ok())
            }
        }

        deserializer.deserialize_any(OptionalTime)
    }

    /// Writes an optional time as [`Timestamp`] does.
    ///
    /// # Errors
    ///
    /// When the serializer fails.
    #[allow(clippy::ref_option)]
    pub fn serialize<S: Serializer>(
        value: &Option<Timestamp>, serializer: S,
    ) -> Result<S::Ok, S::Error> {
        value.serialize(serializer)
    }
}

/// Reads an optional value of any plain JSON kind (a number, a boolean, a
/// string) as `T` does, and an empty string as `None`, as `null` and an
/// absent field are: Clink's optional fields may carry `""` for "absent",
/// which would otherwise refuse the whole event over one field. For
/// `#[serde(default, deserialize_with = "super::common::blank_is_none")]`.
pub(crate) fn blank_is_none<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    use serde::de::IntoDeserializer;

    struct BlankIsNone<T>(PhantomData<T>);

    impl<'de, T: Deserialize<'de>> Visitor<'de> for BlankIsNone<T> {
        type Value = Option<T>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a value, null or an empty string")
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<Self::Value, D2::Error> {
            T::deserialize(d).map(Some)
        }

        fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
            T::deserialize(v.into_deserializer()).map(Some)
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            T::deserialize(v.into_deserializer()).map(Some)
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            T::deserialize(v.into_deserializer()).map(Some)
        }

        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
            T::deserialize(v.into_deserializer()).map(Some)
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            if v.is_empty() {
                return Ok(None);
            }
            T::deserialize(v.into_deserializer()).map(Some)
        }
    }

    deserializer.deserialize_any(BlankIsNone(PhantomData))
}

/// Serde helpers for amounts: `Option<Decimal>` read from the JSON number's
/// own text, so no amount ever passes through `f64`.
///
/// Every amount field of this crate's types uses it. Use it on your own types
/// (for example for a family without a published schema) with
/// `#[serde(default, with = "clink_webhooks::data::amount")]`:
///
/// ```
/// use rust_decimal::Decimal;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Deserialize, Serialize)]
/// struct AgentOrder {
///     #[serde(default, with = "clink_webhooks::data::amount")]
///     amount: Option<Decimal>,
/// }
///
/// let order: AgentOrder = serde_json::from_str(r#"{"amount": 0.1}"#)?;
/// assert_eq!(order.amount, Some("0.1".parse()?));
/// assert_eq!(serde_json::to_string(&order)?, r#"{"amount":0.1}"#);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// Accepted: a JSON number (`19.99`, `1999`, `1.5e3`), a string holding one
/// (`"19.99"`), `null` and `""` (both read as `None`). The amount is exact or
/// an error, never a different amount: the number must be exactly
/// representable as a [`Decimal`] (a coefficient below 2⁹⁶ with at most 28
/// digits after the point, trailing zeros aside), whether or not it is written
/// with an exponent. `10e-29` (`0.0000000000000000000000000001`) and `0e29`
/// are accepted; `1.00000000000000000000000000001e0`, which would need
/// rounding, is refused.
///
/// Reading needs `serde_json`, which hands over the number's text as a
/// [`RawValue`](serde_json::value::RawValue) would get it (lent, not
/// copied, when reading a slice or a `str`); other formats fail with an
/// error. (Reading from a `serde_json::Value` works, but its numbers have
/// already been through `f64`; read from the text to stay exact.) Writing with
/// `serde_json` produces a JSON number with exactly the decimal's digits.
pub mod amount {
    use std::fmt;

    use rust_decimal::Decimal;
    use serde::de::{DeserializeSeed, Error as _, MapAccess, Unexpected, Visitor};
    use serde::ser::Error as _;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use serde_json::value::RawValue;

    /// Reads an optional exact amount; see the [module docs](self).
    ///
    /// # Errors
    ///
    /// When the value is neither a number, a string holding a number, nor
    /// `null`, or does not fit a [`Decimal`] exactly.
    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Decimal>, D::Error> {
        deserializer.deserialize_newtype_struct(RAW_VALUE, RawText)
    }

    /// The name under which serde_json hands over a value's raw text (what
    /// [`RawValue`]'s own `Deserialize` asks for): as a map of one entry,
    /// keyed by this name, whose value is the text, lent from the input
    /// when it can be (reading a slice or a `str`), given otherwise. A
    /// deserializer that does not know the name (another format, or a
    /// serde_json that came to name it otherwise) visits the newtype
    /// instead, and the text is then read through `Box<RawValue>`, as
    /// always; one that hands over its own data as a map (a
    /// `serde_json::Map`, say) has it refused for its key, as
    /// `Box<RawValue>` refuses it. The same amounts and errors either way,
    /// only without the copy of the text.
    const RAW_VALUE: &str = "$serde_json::private::RawValue";

    /// Reads an amount from the raw text of its JSON value, without
    /// copying the text when serde_json lends it.
    struct RawText;

    impl<'de> Visitor<'de> for RawText {
        type Value = Option<Decimal>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            // What `Box<RawValue>` says, for the same refusals.
            f.write_str("any valid JSON value")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            if map.next_key_seed(RawKey)?.is_none() {
                return Err(A::Error::invalid_type(Unexpected::Map, &self));
            }
            let amount = map.next_value_seed(Text)?;
            // Refused here, not inside the entry: the error belongs to the
            // amount's field, and a path tracker names no entry then.
            amount.map_err(A::Error::custom)
        }

        fn visit_newtype_struct<D: Deserializer<'de>>(
            self, deserializer: D,
        ) -> Result<Self::Value, D::Error> {
            let raw = Box::<RawValue>::deserialize(deserializer)?;
            from_text(raw.get()).map_err(D::Error::custom)
        }
    }

    /// The key of the entry serde_json hands a raw value over in: its
    /// name, and nothing else.
    struct RawKey;

    impl<'de> DeserializeSeed<'de> for RawKey {
        type Value = ();

        fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
            deserializer.deserialize_identifier(self)
        }
    }

    impl Visitor<'_> for RawKey {
        type Value = ();

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("raw value")
        }

        fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<(), E> {
            if key == RAW_VALUE {
                Ok(())
            } else {
                Err(E::custom("unexpected raw value"))
            }
        }
    }

    /// The raw text handed over as a string, read into an amount, or why
    /// it is not one.
    struct Text;

    impl<'de> DeserializeSeed<'de> for Text {
        type Value = Result<Option<Decimal>, String>;

        fn deserialize<D: Deserializer<'de>>(
            self, deserializer: D,
        ) -> Result<Self::Value, D::Error> {
            deserializer.deserialize_str(self)
        }
    }

    impl Visitor<'_> for Text {
        type Value = Result<Option<Decimal>, String>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("the raw text of a JSON value")
        }

        fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Self::Value, E> {
            Ok(from_text(text))
        }
    }

    /// An amount from the raw text of its JSON value.
    fn from_text(text: &str) -> Result<Option<Decimal>, String> {
        if text == "null" {
            return Ok(None);
        }
        if text.starts_with('"') {
            let inner: String = serde_json::from_str(text).map_err(|error| error.to_string())?;
            if inner.is_empty() {
                return Ok(None);
            }
            return parse(&inner).map(Some);
        }
        parse(text).map(Some)
    }

    /// Writes an optional amount as a JSON number with exactly its digits
    /// (`None` as `null`).
    ///
    /// # Errors
    ///
    /// Only those of the serializer.
    pub fn serialize<S: Serializer>(
        amount: &Option<Decimal>, serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match amount {
            None => serializer.serialize_none(),
            Some(amount) => RawValue::from_string(amount.to_string())
                .map_err(S::Error::custom)?
                .serialize(serializer),
        }
    }

    /// Parses the text of a JSON number into the exactly equal decimal.
    pub(crate) fn parse(text: &str) -> Result<Decimal, String> {
        exact(text).map_err(|why| format!("`{text}` is not an exact decimal amount: {why}"))
    }

    /// The most digits after the point a [`Decimal`] holds.
    const MAX_SCALE: i64 = 28;
    /// One more than the largest coefficient a [`Decimal`] holds (2⁹⁶).
    const COEFFICIENT_LIMIT: u128 = 1 << 96;

    /// `text` as a decimal, exactly, or why not: the common form (a plain
    /// decimal of a few digits) read directly, any other through
    /// [`exact_any`], which gives the same answer for the common form too.
    fn exact(text: &str) -> Result<Decimal, &'static str> {
        plain(text.as_bytes()).map_or_else(|| exact_any(text), Ok)
    }

    /// An optional `-`, then digits with at most one `.` between them (at
    /// least one digit before it), at most 19 characters after the sign:
    /// the digits, as written, are the coefficient (below 10¹⁹, so within
    /// 96 bits) and the digits after the point the scale (at most 18, so
    /// within 28). `None` for any other text, `exact_any`'s to read.
    fn plain(text: &[u8]) -> Option<Decimal> {
        let (negative, rest) = match text.split_first() {
            Some((b'-', rest)) => (true, rest),
            _ => (false, text),
        };
        if rest.is_empty() || rest.len() > 19 || rest[0] == b'.' {
            return None;
        }
        let mut coefficient = 0_u64;
        let mut point = None;
        for (at, &b) in rest.iter().enumerate() {
            match b {
                b'0'..=b'9' => coefficient = coefficient * 10 + u64::from(b - b'0'),
                b'.' if point.is_none() => point = Some(at),
                _ => return None,
            }
        }
        let scale = point.map_or(0, |at| rest.len() - at - 1);
        Some(build(
            u128::from(coefficient),
            negative,
            i64::try_from(scale).ok()?,
        ))
    }

    /// `text` as a decimal, exactly, or why not.
    ///
    /// The grammar is an optional sign, digits with an optional fraction,
    /// and an optional exponent (`e`/`E`, optional sign, digits). The value
    /// is `digits × 10^(exponent − fraction digits)`, computed without
    /// rounding: it is accepted when it has at most 28 digits after the point
    /// once trailing zeros are dropped (`10e-29` is `0.0000…1` with 28
    /// places) and its coefficient fits 96 bits. The number of places written
    /// is kept when it fits (`19.90` stays `19.90`).
    fn exact_any(text: &str) -> Result<Decimal, &'static str> {
        let bytes = text.as_bytes();
        let (negative, rest) = match bytes.split_first() {
            Some((b'-', rest)) => (true, rest),
            Some((b'+', rest)) => (false, rest),
            _ => (false, bytes),
        };
        let (mantissa, exponent) = match rest.iter().position(|b| matches!(b, b'e' | b'E')) {
            Some(at) => (&rest[..at], Some(&rest[at + 1..])),
            None => (rest, None),
        };
        let (int, frac) = match mantissa.iter().position(|&b| b == b'.') {
            Some(at) => (&mantissa[..at], &mantissa[at + 1..]),
            None => (mantissa, &[][..]),
        };
        if (int.is_empty() && frac.is_empty()) || !int.iter().chain(frac).all(u8::is_ascii_digit) {
            return Err("not a number");
        }
        let exponent = match exponent {
            None => 0,
            Some(text) => parse_exponent(text)?,
        };
        let frac_len = i64::try_from(frac.len()).map_err(|_| "too many digits")?;
        // The scale as written: the places a plain rendering of the text has.
        let written_scale = frac_len.saturating_sub(exponent);

        let digit = |i: usize| {
            if i < int.len() {
                int[i] - b'0'
            } else {
                frac[i - int.len()] - b'0'
            }
        };
        let len = int.len() + frac.len();
        let Some(first) = (0..len).find(|&i| digit(i) != 0) else {
            // Zero, whatever the exponent; keep the places written when they fit.
            let scale = written_scale.clamp(0, MAX_SCALE);
            return Ok(build(0, negative, scale));
        };
        let last = (0..len).rev().find(|&i| digit(i) != 0).unwrap_or(first);
        let trailing_zeros = i64::try_from(len - 1 - last).map_err(|_| "too many digits")?;
        let significant = last - first + 1;
        // value = significant digits × 10^power, with no trailing zero left.
        let power = exponent
            .saturating_sub(frac_len)
            .saturating_add(trailing_zeros);
        if significant > 29 {
            return Err("more significant digits than a decimal holds");
        }
        let mut coefficient = (first..=last).fold(0u128, |acc, i| acc * 10 + u128::from(digit(i)));
        let mut scale = 0;
        if power >= 0 {
            for _ in 0..power {
                coefficient = coefficient
                    .checked_mul(10)
                    .filter(|&c| c < COEFFICIENT_LIMIT)
                    .ok_or("too large for a decimal")?;
            }
        } else {
            scale = -power;
            if scale > MAX_SCALE {
                return Err("more than 28 digits after the point");
            }
        }
        if coefficient >= COEFFICIENT_LIMIT {
            return Err("too large for a decimal");
        }
        // Put back the trailing zeros that were written, as far as they fit.
        while scale < written_scale.min(MAX_SCALE) {
            match coefficient
                .checked_mul(10)
                .filter(|&c| c < COEFFICIENT_LIMIT)
            {
                Some(wider) => {
                    coefficient = wider;
                    scale += 1;
                }
                None => break,
            }
        }
        Ok(build(coefficient, negative, scale))
    }

    /// An exponent's digits, saturating far beyond any exponent that can
    /// still give a decimal (only zero survives those, and zero is zero).
    fn parse_exponent(text: &[u8]) -> Result<i64, &'static str> {
        let (negative, digits) = match text.split_first() {
            Some((b'-', rest)) => (true, rest),
            Some((b'+', rest)) => (false, rest),
            _ => (false, text),
        };
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return Err("not a number");
        }
        let magnitude = digits.iter().fold(0i64, |acc, &d| {
            acc.saturating_mul(10)
                .saturating_add(i64::from(d - b'0'))
                .min(1 << 40)
        });
        Ok(if negative { -magnitude } else { magnitude })
    }

    /// A decimal from a coefficient below 2⁹⁶ and a scale of at most 28.
    fn build(coefficient: u128, negative: bool, scale: i64) -> Decimal {
        debug_assert!(coefficient < COEFFICIENT_LIMIT && (0..=MAX_SCALE).contains(&scale));
        let word = |shift: u32| u32::try_from((coefficient >> shift) & 0xffff_ffff).unwrap_or(0);
        let scale = u32::try_from(scale).unwrap_or(0);
        Decimal::from_parts(word(0), word(32), word(64), negative, scale)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        /// A decimal as its parts, which `==` on decimals does not all
        /// compare (`19.9 == 19.90`).
        fn parts(read: Result<Decimal, &'static str>) -> Result<(i128, u32, bool), &'static str> {
            read.map(|d| (d.mantissa(), d.scale(), d.is_sign_negative()))
        }

        #[derive(Debug, serde::Deserialize)]
        struct Priced {
            #[serde(default, with = "super")]
            amount: Option<Decimal>,
        }

        /// An amount as its parts, or that it was refused.
        type Read = Option<Option<(i128, u32, bool)>>;

        fn read<E>(result: Result<Option<Decimal>, E>) -> Read {
            result
                .ok()
                .map(|amount| amount.map(|d| (d.mantissa(), d.scale(), d.is_sign_negative())))
        }

        #[test]
        fn every_reader_reads_the_same_amount_whether_the_text_is_lent_or_not() {
            for value in [
                "19.99",
                "19.90",
                "-0.5",
                "1999",
                "1.5e3",
                "25E-2",
                "10e-29",
                "1e99",
                "0.1e",
                "\"19.90\"",
                "\"\"",
                "\"x\"",
                "null",
                "true",
                "[1]",
                "{}",
                "{\"a\":1}",
            ] {
                let body = format!(r#"{{"amount":{value}}}"#);
                // serde_json lends the text from a slice or a `str`, gives
                // it from a reader; a deserializer that does not know the
                // raw-value name takes the newtype path, here fed the same
                // text.
                let lent =
                    read(serde_json::from_slice::<Priced>(body.as_bytes()).map(|p| p.amount));
                let from_str = read(serde_json::from_str::<Priced>(&body).map(|p| p.amount));
                let given =
                    read(serde_json::from_reader::<_, Priced>(body.as_bytes()).map(|p| p.amount));
                let newtype = read(
                    RawText.visit_newtype_struct(&mut serde_json::Deserializer::from_str(value)),
                );
                let expected = read(
                    Box::<RawValue>::deserialize(&mut serde_json::Deserializer::from_str(value))
                        .map_err(|e| e.to_string())
                        .and_then(|raw| from_text(raw.get())),
                );
                assert_eq!(lent, expected, "{value} from a slice");
                assert_eq!(from_str, expected, "{value} from a str");
                assert_eq!(given, expected, "{value} from a reader");
                assert_eq!(newtype, expected, "{value} through the newtype");
            }
            // What each of the cases above comes to, so that the comparison
            // cannot pass on everything refused.
            let plain = |text: &str| {
                read(
                    serde_json::from_str::<Priced>(&format!(r#"{{"amount":{text}}}"#))
                        .map(|p| p.amount),
                )
            };
            assert_eq!(plain("19.90"), Some(Some((1990, 2, false))));
            assert_eq!(plain("\"19.90\""), Some(Some((1990, 2, false))));
            assert_eq!(plain("1.5e3"), Some(Some((1500, 0, false))));
            assert_eq!(plain("null"), Some(None));
            assert_eq!(plain("\"\""), Some(None));
            for refused in ["1e99", "0.1e", "\"x\"", "true", "[1]", "{}"] {
                assert_eq!(plain(refused), None, "{refused}");
            }
            // Data handed over as a map (here a `serde_json::Map`) is not
            // a raw value: refused as `Box<RawValue>` refuses it, whatever
            // its entry holds.
            for (key, value) in [("k", "19.99"), ("k", "null"), (RAW_VALUE, "19.99")] {
                let map = || {
                    let mut map = serde_json::Map::new();
                    map.insert(key.to_owned(), serde_json::Value::from(value));
                    map
                };
                let ours = deserialize(map()).map_err(|e| e.to_string());
                let raw = Box::<RawValue>::deserialize(map())
                    .map_err(|e| e.to_string())
                    .and_then(|raw| from_text(raw.get()));
                assert_eq!(read(ours.clone()), read(raw.clone()), "{key}: {value}");
                if key == "k" {
                    assert_eq!(ours, Err("unexpected raw value".to_owned()));
                }
            }
            let empty = deserialize(serde_json::Map::new()).map_err(|e| e.to_string());
            let raw =
                Box::<RawValue>::deserialize(serde_json::Map::new()).map_err(|e| e.to_string());
            assert_eq!(empty.unwrap_err(), raw.unwrap_err());
            // A refused amount is the field's error, not one inside the
            // raw text's entry.
            let mut de = serde_json::Deserializer::from_str(r#"{"amount":1e99}"#);
            let error = serde_path_to_error::deserialize::<_, Priced>(&mut de).unwrap_err();
            assert_eq!(error.path().to_string(), "amount");
            // A `Value` hands the text over too (its numbers went through
            // `f64` first, as the module docs say).
            let value: serde_json::Value = serde_json::from_str(r#"{"amount":19.99}"#).unwrap();
            let priced: Priced = serde_json::from_value(value).unwrap();
            assert_eq!(priced.amount, Some(Decimal::new(1999, 2)));
        }

        #[test]
        fn the_plain_form_read_directly_is_what_the_full_grammar_reads() {
            let alphabet = ['0', '1', '5', '9', '.', '-', '+', 'e', 'E', ' '];
            let mut texts = vec![String::new()];
            let mut shorter = vec![String::new()];
            for _ in 0..5 {
                let longer: Vec<String> = shorter
                    .iter()
                    .flat_map(|text| alphabet.iter().map(move |c| format!("{text}{c}")))
                    .collect();
                texts.extend(longer.iter().cloned());
                shorter = longer;
            }
            // Around the direct read's 19 characters, with the point
            // everywhere and without it, signed and not.
            for len in 17..=21 {
                for digits in ["9".repeat(len), format!("1{}", "0".repeat(len - 1))] {
                    for at in 0..=len {
                        let with_point = format!("{}.{}", &digits[..at], &digits[at..]);
                        for text in [digits.clone(), with_point] {
                            texts.push(format!("-{text}"));
                            texts.push(text);
                        }
                    }
                }
            }
            let mut direct = 0;
            for text in &texts {
                assert_eq!(parts(exact(text)), parts(exact_any(text)), "{text:?}");
                direct += usize::from(plain(text.as_bytes()).is_some());
            }
            assert!(direct > 1000 && direct < texts.len(), "{direct}");
            assert_eq!(parts(exact("19.90")), Ok((1990, 2, false)));
            assert_eq!(parts(exact("-19.90")), Ok((-1990, 2, true)));
        }
    }
}

/// An ISO 4217 currency code as Clink sends it, e.g. `USD`.
///
/// A code Clink adds later is just another value, so this is a string rather
/// than an enum; the codes Clink's schema lists are constants for comparison.
/// The code is kept exactly as sent (no case folding).
///
/// ```
/// use clink_webhooks::data::Currency;
///
/// let c: Currency = serde_json::from_str(r#""USD""#).unwrap();
/// assert_eq!(c, Currency::USD);
/// assert_eq!(c.as_str(), "USD");
/// assert_eq!(Currency::from("CHF").to_string(), "CHF");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Currency(Cow<'static, str>);

macro_rules! currency_consts {
    ($( $code:ident: $name:literal, )+) => {
        impl Currency {
            $(
                #[doc = concat!("`", stringify!($code), "`, ", $name, ".")]
                pub const $code: Self = Self(Cow::Borrowed(stringify!($code)));
            )+

            /// The code as a `'static` string when it is one of the constants,
            /// so that decoding a listed code allocates nothing.
            fn listed(code: &str) -> Option<&'static str> {
                match code {
                    $( stringify!($code) => Some(stringify!($code)), )+
                    _ => None,
                }
            }
        }
    };
}

currency_consts! {
    USD: "US dollar",
    EUR: "euro",
    JPY: "Japanese yen",
    GBP: "pound sterling",
    AUD: "Australian dollar",
    CAD: "Canadian dollar",
    CNY: "Chinese yuan",
    HKD: "Hong Kong dollar",
    SGD: "Singapore dollar",
    KRW: "South Korean won",
    AED: "UAE dirham",
    THB: "Thai baht",
    IDR: "Indonesian rupiah",
    PHP: "Philippine peso",
    MYR: "Malaysian ringgit",
    BRL: "Brazilian real",
    INR: "Indian rupee",
}

impl Currency {
    /// A currency from its code, kept as given.
    pub fn new(code: impl Into<String>) -> Self {
        Self(Cow::Owned(code.into()))
    }

    /// The code, e.g. `USD`.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Currency {
    fn from(code: &str) -> Self {
        match Self::listed(code) {
            Some(listed) => Self(Cow::Borrowed(listed)),
            None => Self::new(code),
        }
    }
}

impl From<String> for Currency {
    fn from(code: String) -> Self {
        Self::new(code)
    }
}

impl AsRef<str> for Currency {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq<str> for Currency {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Currency {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Currency {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserialize_str_into(deserializer)
    }
}

/// Merchant key/value pairs attached to a resource.
///
/// Clink sends `metadata` as a JSON object in most payloads, and as a string
/// holding a JSON-encoded object in others (refunds, per Clink's docs). Both
/// decode to the same entries. A string that does not hold a JSON object is
/// kept verbatim in [`unparsed`](Self::unparsed), with no entries, rather than
/// failing the event. Serializes as an object, or as the unparsed string when
/// there was one.
///
/// ```
/// use clink_webhooks::data::Metadata;
///
/// let object: Metadata = serde_json::from_str(r#"{"arn":"74537","tier":"gold"}"#).unwrap();
/// let encoded: Metadata = serde_json::from_str(r#""{\"arn\":\"74537\",\"tier\":\"gold\"}""#).unwrap();
/// assert_eq!(object, encoded);
/// assert_eq!(object.get_str("arn"), Some("74537"));
///
/// let odd: Metadata = serde_json::from_str(r#""arn=74537""#).unwrap();
/// assert!(odd.is_empty());
/// assert_eq!(odd.unparsed(), Some("arn=74537"));
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metadata {
    entries: Map<String, Value>,
    unparsed: Option<String>,
}

impl Metadata {
    /// Empty metadata.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The value under `key`.
    #[must_use]
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.entries.get(key)
    }

    /// The value under `key` when it is a string (Clink's schema says values
    /// are strings, but does not enforce it).
    #[must_use]
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Value::as_str)
    }

    /// Sets `key`, returning the value it replaces.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<Value>) -> Option<Value> {
        self.entries.insert(key.into(), value.into())
    }

    /// All entries.
    #[must_use]
    pub fn entries(&self) -> &Map<String, Value> {
        &self.entries
    }

    /// All entries, by value.
    #[must_use]
    pub fn into_entries(self) -> Map<String, Value> {
        self.entries
    }

    /// Whether there are no entries.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The string Clink sent when it was not a JSON-encoded object; `None`
    /// when the metadata decoded into entries.
    #[must_use]
    pub fn unparsed(&self) -> Option<&str> {
        self.unparsed.as_deref()
    }

    fn from_text(text: &str) -> Self {
        match serde_json::from_str::<Map<String, Value>>(text) {
            Ok(entries) => Self::from(entries),
            Err(_) => Self {
                entries: Map::new(),
                unparsed: Some(text.to_owned()),
            },
        }
    }
}

impl From<Map<String, Value>> for Metadata {
    fn from(entries: Map<String, Value>) -> Self {
        Self {
            entries,
            unparsed: None,
        }
    }
}

impl<K: Into<String>, V: Into<Value>> FromIterator<(K, V)> for Metadata {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Self::from(
            iter.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect::<Map<_, _>>(),
        )
    }
}

impl Serialize for Metadata {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match &self.unparsed {
            Some(text) => serializer.serialize_str(text),
            None => self.entries.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for Metadata {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MetadataVisitor;

        impl<'de> Visitor<'de> for MetadataVisitor {
            type Value = Metadata;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object, or a string holding a JSON-encoded object")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Metadata, E> {
                Ok(Metadata::from_text(v))
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Metadata, A::Error> {
                Map::deserialize(de::value::MapAccessDeserializer::new(map)).map(Metadata::from)
            }
        }

        deserializer.deserialize_any(MetadataVisitor)
    }
}

/// An item given inline with its price rather than as a registered price
/// (`PriceData`); used by orders and sessions.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct PriceData {
    /// Display name of the item. Always sent by Clink (required in its schema).
    pub name: Option<Text>,
    /// How many units; at least 1.
    #[serde(default, deserialize_with = "blank_is_none")]
    pub quantity: Option<i32>,
    /// Price per unit, greater than 0. Always sent by Clink (required in its schema).
    #[serde(default, with = "amount")]
    pub unit_amount: Option<Decimal>,
    /// The currency of `unit_amount`.
    pub currency: Option<Currency>,
    /// Image of the item.
    pub image_url: Option<Text>,
}

string_enum! {
    /// The length of a billing cycle.
    pub enum Interval {
        /// Daily.
        Day = "day",
        /// Weekly.
        Week = "week",
        /// Monthly.
        Month = "month",
        /// Yearly.
        Year = "year",
        /// Every 3 months.
        Quarter = "quarter",
        /// Every 6 months.
        HalfYear = "half_year",
        /// Every `intervalCount` days.
        Custom = "custom",
    }
}

string_enum! {
    /// How a subscription or invoice is collected.
    pub enum Billing {
        /// Clink charges the stored payment method.
        ChargeAutomatically = "charge_automatically",
        /// Clink sends an invoice for the customer to pay.
        SendInvoice = "send_invoice",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An optional time reads as `None` from `null`, from an empty string
    /// (as Clink's optional fields may carry), when absent, and from a
    /// number or string not read as a time (a date-time without its
    /// offset); every other form as the envelope's times read: a dispute
    /// whose evidence deadline is `""` or `2025-01-15T12:00:00` decodes.
    /// Before, a form not read refused the whole event.
    #[test]
    fn an_empty_time_is_absent_not_an_error() {
        use crate::data::Dispute;
        let dispute: Dispute = serde_json::from_str(
            r#"{"chargeBackId":"cb","evidenceDeadline":"","channelDisputeTime":null}"#,
        )
        .unwrap();
        assert_eq!(dispute.evidence_deadline, None);
        assert_eq!(dispute.channel_dispute_time, None);
        for (text, millis) in [
            ("1736942400000", Some(1_736_942_400_000)),
            (r#""1736942400000""#, Some(1_736_942_400_000)),
            (r#""2025-01-15T12:00:00.000Z""#, Some(1_736_942_400_000)),
            (r#""""#, None),
            ("null", None),
            // Forms not read as a time are absent, not a refused event.
            (r#"" ""#, None),
            (r#""soon""#, None),
            (r#""2025-01-15T12:00:00""#, None),
            (r#""2025-01-15 12:00:00.000+0000""#, None),
            ("1.5", None),
            ("18446744073709551615", None),
            (r#""99999999999999999999""#, None),
        ] {
            let dispute: Dispute =
                serde_json::from_str(&format!(r#"{{"evidenceDeadline":{text}}}"#)).unwrap();
            assert_eq!(
                dispute.evidence_deadline.map(crate::Timestamp::as_millis),
                millis,
                "{text}"
            );
        }
        for refused in ["[]", "{}", "true"] {
            let text = format!(r#"{{"evidenceDeadline":{refused}}}"#);
            assert!(serde_json::from_str::<Dispute>(&text).is_err(), "{refused}");
        }
        let written = serde_json::to_value(&dispute).unwrap();
        assert!(written
            .get("evidenceDeadline")
            .is_some_and(serde_json::Value::is_null));
    }

    /// An integer, boolean or dispute status sent as `""` is absent, as
    /// `null` is; the values themselves read as before, and another kind
    /// is still an error. Before, `""` refused the whole event.
    #[test]
    fn an_empty_string_is_an_absent_number_or_flag() {
        use crate::data::{Dispute, DisputeStatus, Subscription};
        let sub: Subscription =
            serde_json::from_str(r#"{"quantity":"","cancelAtPeriodEnd":"","elapsedCycles":null}"#)
                .unwrap();
        assert_eq!(
            (sub.quantity, sub.cancel_at_period_end, sub.elapsed_cycles),
            (None, None, None)
        );
        let sub: Subscription =
            serde_json::from_str(r#"{"quantity":2,"cancelAtPeriodEnd":true}"#).unwrap();
        assert_eq!(
            (sub.quantity, sub.cancel_at_period_end),
            (Some(2), Some(true))
        );
        let dispute: Dispute = serde_json::from_str(r#"{"status":""}"#).unwrap();
        assert_eq!(dispute.status, None);
        let dispute: Dispute = serde_json::from_str(r#"{"status":3}"#).unwrap();
        assert_eq!(dispute.status, Some(DisputeStatus::Won));
        for refused in [
            r#"{"quantity":"2"}"#,
            r#"{"quantity":[]}"#,
            r#"{"quantity":1.5}"#,
            r#"{"quantity":4294967296}"#,
            r#"{"cancelAtPeriodEnd":"yes"}"#,
        ] {
            assert!(
                serde_json::from_str::<Subscription>(refused).is_err(),
                "{refused}"
            );
        }
    }

    #[test]
    fn amounts_parse_exactly_or_not_at_all() {
        for (text, expected) in [
            ("19.99", "19.99"),
            ("0.1", "0.1"),
            ("-12.345678", "-12.345678"),
            ("1999", "1999"),
            ("1.5e3", "1500"),
            ("25E-2", "0.25"),
        ] {
            assert_eq!(amount::parse(text).unwrap().to_string(), expected);
        }
        for bad in [
            "",
            "abc",
            "1_000",
            " 1",
            "0.00000000000000000000000000001",
            "1e99",
        ] {
            assert!(amount::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn exponents_never_round() {
        // Each of these used to come back rounded through `from_scientific`.
        for bad in [
            "1.00000000000000000000000000001e0",
            "100000000000000000000000000001e-29",
            "1e-29",
            "0.12345678901234567890123456789e0",
            "79228162514264337593543950336e0",
            "7.9228162514264337593543950336e28",
            "1e29",
            "1e-99999999999999999999999",
            "1e99999999999999999999999",
        ] {
            assert!(amount::parse(bad).is_err(), "{bad}");
        }
        let wrapped = r#"{"amountTotal":1.00000000000000000000000000001e0}"#;
        assert!(serde_json::from_str::<crate::data::Order>(wrapped).is_err());
        let quoted = r#"{"amountTotal":"1.00000000000000000000000000001e0"}"#;
        assert!(serde_json::from_str::<crate::data::Order>(quoted).is_err());
    }

    #[test]
    fn exactly_representable_values_are_accepted_in_any_notation() {
        for (text, expected) in [
            ("10e-29", "0.0000000000000000000000000001"),
            ("0e29", "0"),
            ("0e-99999999999999", "0.0000000000000000000000000000"),
            ("-0.0e5", "0"),
            // 29 digits, exactly: 1.2345678901234567890123456789 has 28 places.
            (
                "0.12345678901234567890123456789e1",
                "1.2345678901234567890123456789",
            ),
            (
                "79228162514264337593543950335e0",
                "79228162514264337593543950335",
            ),
            (
                "7.9228162514264337593543950335e28",
                "79228162514264337593543950335",
            ),
            // Trailing zeros past 28 places are not digits of the value.
            (
                "0.100000000000000000000000000000",
                "0.1000000000000000000000000000",
            ),
            ("19.90", "19.90"),
            ("1.50e1", "15.0"),
            ("-1E+2", "-100"),
            ("+3", "3"),
            (".5", "0.5"),
        ] {
            let parsed = amount::parse(text).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(parsed.to_string(), expected, "{text}");
        }
    }

    #[test]
    fn unknown_enum_values_round_trip() {
        let known: Interval = serde_json::from_str(r#""half_year""#).unwrap();
        assert_eq!(known, Interval::HalfYear);
        let unknown: Interval = serde_json::from_str(r#""fortnight""#).unwrap();
        assert_eq!(unknown, Interval::Unknown("fortnight".into()));
        assert_eq!(serde_json::to_string(&unknown).unwrap(), r#""fortnight""#);
        assert!(serde_json::from_str::<Interval>("7").is_err());
    }

    #[test]
    fn metadata_serializes_back_as_received() {
        for json in [r#"{"a":"1","n":2}"#, r#""not json""#] {
            let m: Metadata = serde_json::from_str(json).unwrap();
            assert_eq!(serde_json::to_string(&m).unwrap(), json);
        }
        assert!(serde_json::from_str::<Metadata>("[1]").is_err());
    }
}
