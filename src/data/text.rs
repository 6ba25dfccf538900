//! [`Text`]: the type of the data's text fields.

use std::borrow::{Borrow, Cow};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;
use std::str::FromStr;

use compact_str::CompactString;
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// A text field of an event's data: an id, an email, a code, a message.
///
/// It reads as a `&str` (it dereferences to one), compares equal to `str`
/// and `String`, prints as the text itself, and converts from and into a
/// `String`. A text of up to 24 bytes (ids such as `ord_test_123`, most emails
/// and codes) is held inline, so decoding an event allocates nothing for
/// it; a longer one is held on the heap, as a `String` would be. With the
/// `postgres` or `sqlite` feature it is a parameter of `tokio-postgres`'s
/// and `rusqlite`'s statements as a `&str` is; elsewhere, pass
/// [`as_str`](Self::as_str).
///
/// ```
/// use clink_webhooks::data::{Order, Text};
///
/// let mut order = Order::default();
/// order.order_id = Some("ord_1".into());
/// assert_eq!(order.order_id.as_deref(), Some("ord_1"));
/// assert_eq!(order.order_id, Some(Text::from("ord_1")));
/// let id: String = order.order_id.unwrap().into();
/// assert_eq!(id, "ord_1");
/// ```
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Text(CompactString);

impl Text {
    /// The empty text.
    #[must_use]
    pub const fn new() -> Self {
        Self(CompactString::const_new(""))
    }

    /// The text as a `&str`.
    #[must_use]
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// The text as a `String` (without a copy when it is held on the heap).
    #[must_use]
    pub fn into_string(self) -> String {
        self.0.into_string()
    }
}

impl Deref for Text {
    type Target = str;

    fn deref(&self) -> &str {
        self.0.as_str()
    }
}

impl AsRef<str> for Text {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<[u8]> for Text {
    fn as_ref(&self) -> &[u8] {
        self.as_str().as_bytes()
    }
}

impl Borrow<str> for Text {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

// As `str` hashes, since `Text` borrows as one.
impl Hash for Text {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<&str> for Text {
    fn from(text: &str) -> Self {
        Self(CompactString::from(text))
    }
}

impl From<&String> for Text {
    fn from(text: &String) -> Self {
        Self::from(text.as_str())
    }
}

impl From<String> for Text {
    fn from(text: String) -> Self {
        Self(CompactString::from(text))
    }
}

impl From<Box<str>> for Text {
    fn from(text: Box<str>) -> Self {
        Self(CompactString::from(text))
    }
}

impl From<Cow<'_, str>> for Text {
    fn from(text: Cow<'_, str>) -> Self {
        Self(CompactString::from(text))
    }
}

impl From<Text> for String {
    fn from(text: Text) -> Self {
        text.into_string()
    }
}

impl FromStr for Text {
    type Err = std::convert::Infallible;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(Self::from(text))
    }
}

impl PartialEq<str> for Text {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Text {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<String> for Text {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<Text> for str {
    fn eq(&self, other: &Text) -> bool {
        self == other.as_str()
    }
}

impl PartialEq<Text> for &str {
    fn eq(&self, other: &Text) -> bool {
        *self == other.as_str()
    }
}

impl PartialEq<Text> for String {
    fn eq(&self, other: &Text) -> bool {
        self == other.as_str()
    }
}

impl Serialize for Text {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor;

        impl Visitor<'_> for TextVisitor {
            type Value = Text;

            // As `String` says it, so that an error reads the same.
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<Text, E> {
                Ok(Text::from(text))
            }

            fn visit_string<E: de::Error>(self, text: String) -> Result<Text, E> {
                Ok(Text::from(text))
            }
        }

        deserializer.deserialize_str(TextVisitor)
    }
}

/// A `Text` goes into a statement's parameter as a `&str` does.
#[cfg(feature = "postgres")]
impl tokio_postgres::types::ToSql for Text {
    fn to_sql(
        &self, ty: &tokio_postgres::types::Type, out: &mut bytes::BytesMut,
    ) -> Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        self.as_str().to_sql(ty, out)
    }

    fn accepts(ty: &tokio_postgres::types::Type) -> bool {
        <&str as tokio_postgres::types::ToSql>::accepts(ty)
    }

    tokio_postgres::types::to_sql_checked!();
}

/// A `Text` goes into a statement's parameter as a `&str` does.
#[cfg(feature = "sqlite")]
impl rusqlite::ToSql for Text {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        Ok(rusqlite::types::ToSqlOutput::from(self.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn a_short_text_is_held_inline_and_a_long_one_whole() {
        let short = Text::from("a".repeat(24).as_str());
        assert!(!short.0.is_heap_allocated());
        let long = Text::from("b".repeat(25).as_str());
        assert!(long.0.is_heap_allocated());
        assert_eq!(long, "b".repeat(25));
    }

    #[test]
    fn decodes_and_encodes_as_a_string_does() {
        for json in [
            r#""ord_1""#,
            r#""caf\u00e9 \"quoted\"""#,
            r#""""#,
            r#""josé@example.com""#,
        ] {
            let text: Text = serde_json::from_str(json).unwrap();
            let string: String = serde_json::from_str(json).unwrap();
            assert_eq!(text, string);
            assert_eq!(
                serde_json::to_string(&text).unwrap(),
                serde_json::to_string(&string).unwrap()
            );
            assert_eq!(format!("{text:?}"), format!("{string:?}"));
        }
        let text_error = serde_json::from_str::<Text>("5").unwrap_err().to_string();
        let string_error = serde_json::from_str::<String>("5").unwrap_err().to_string();
        assert_eq!(text_error, string_error);
    }

    #[test]
    fn looks_up_as_a_str() {
        let set: HashSet<Text> = ["ord_1".into(), "ord_2".into()].into_iter().collect();
        assert!(set.contains("ord_1"));
        assert!(!set.contains("ord_3"));
    }
}
