//! Reading the envelope: `id`, `type`, `created`, `livemode`, and where the
//! resource lies in the body (`data`, or `data.object` when `data` wraps it).
//!
//! [`read`] does it in one pass over the body, without building a
//! `serde_json::Value`: the id is kept as a span of the body (copied only
//! when the JSON spells it with escapes), and the resource's span is found
//! while `data` is read, so the typed decode later reads exactly those bytes
//! and nothing scans the body again.
//!
//! The rules are those of the straightforward reading kept in [`slow`]
//! (a visitor with `Option<Value>` and `Option<&RawValue>` fields that notes
//! a repeated key, then a second parse of `data` to look for a wrapper). The
//! one-pass reading is at least as strict in everything it checks, and
//! whenever it cannot decide alone (a syntax error, a key spelled with
//! escapes, `data` that is not an object, a repeated key of the envelope or
//! a repeated `object` in `data`, which it notices with its seen flags) the
//! body is read again by [`slow`], which tells a repeated key
//! ([`EnvelopeError::DuplicateKey`]) from a body that is not JSON; so the two
//! always agree, and a test compares them on a corpus of odd bodies.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;
use std::ops::Range;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{EnvelopeError, EventType};
use crate::Timestamp;

mod slow;

use slow::slow;

/// What the envelope says, with `data` as a span of the body.
#[derive(Debug, PartialEq)]
pub(super) struct Envelope {
    pub(super) id: IdText,
    pub(super) event_type: EventType,
    pub(super) created: Option<Timestamp>,
    pub(super) livemode: Option<bool>,
    pub(super) data: Option<Range<usize>>,
}

/// The event id: where it lies in the body, or its own text when the JSON
/// spelled it with escapes (and the body's bytes are not the id's).
#[derive(Debug, Clone, PartialEq)]
pub(super) enum IdText {
    Span(Range<usize>),
    Owned(Box<str>),
}

/// Reads the envelope of `text`, a JSON object.
pub(super) fn read(text: &str) -> Result<Envelope, EnvelopeError> {
    match fast(text) {
        Some(envelope) => envelope,
        None => slow(text),
    }
}

/// The byte range of `inner` within `outer`, where `inner` is a sub-slice of it.
pub(super) fn span_of(outer: &str, inner: &str) -> Range<usize> {
    let start = (inner.as_ptr() as usize).saturating_sub(outer.as_ptr() as usize);
    start..start + inner.len()
}

/// Whether `inner` lies within `outer`'s bytes.
fn within(outer: &str, inner: &str) -> bool {
    let (start, end) = (
        outer.as_ptr() as usize,
        outer.as_ptr() as usize + outer.len(),
    );
    let at = inner.as_ptr() as usize;
    at >= start && at + inner.len() <= end
}

/// The one-pass reading; `None` when it cannot decide and [`slow`] must.
fn fast(text: &str) -> Option<Result<Envelope, EnvelopeError>> {
    let mut de = serde_json::Deserializer::from_str(text);
    let wire = (&mut de).deserialize_map(EnvelopeVisitor { text }).ok()?;
    de.end().ok()?;
    // Errors come in one order in both readings: not JSON, a repeated key
    // (of the envelope or of the `data` wrapper), no id, no type. Whatever
    // about `data` is left to the slow reading (a repeated `object`, say)
    // is settled before the id is looked at, so a body with both a
    // repeated key and no id is a `DuplicateKey` here as it is there.
    let data = match wire.data {
        None | Some(Data::Null) => None,
        Some(Data::Object {
            start,
            end,
            wrapped,
        }) => Some(match wrapped {
            Some(object) => span_of(text, object.get()),
            None => object_span(text, start?, end?)?,
        }),
        Some(Data::Other) => return None,
    };
    let id = match wire.id {
        Some(Text::Str(Cow::Borrowed(id))) if !id.is_empty() => IdText::Span(span_of(text, id)),
        Some(Text::Str(Cow::Owned(id))) if !id.is_empty() => IdText::Owned(id.into_boxed_str()),
        _ => return Some(Err(EnvelopeError::MissingId)),
    };
    let event_type = match wire.event_type {
        Some(Text::Str(name)) if !name.is_empty() => EventType::from(name.as_ref()),
        _ => return Some(Err(EnvelopeError::MissingType)),
    };
    // A `created` in a form nobody reported is not worth refusing a
    // verified delivery over; it reads as absent.
    let created = wire
        .created
        .and_then(|raw| serde_json::from_str::<Timestamp>(raw.get()).ok());
    Some(Ok(Envelope {
        id,
        event_type,
        created,
        livemode: wire.livemode,
        data,
    }))
}

/// The object from `start` to `end`, checked to be one: `{` to `}`.
fn object_span(text: &str, start: usize, end: usize) -> Option<Range<usize>> {
    let bytes = text.as_bytes();
    let open = bytes.get(start) == Some(&b'{');
    let close = end > start && bytes.get(end - 1) == Some(&b'}');
    (open && close).then_some(start..end)
}

fn is_whitespace(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | b'\r')
}

/// The first index at or after `at` that is not JSON whitespace.
fn skip_whitespace(bytes: &[u8], mut at: usize) -> usize {
    while bytes.get(at).is_some_and(|&b| is_whitespace(b)) {
        at += 1;
    }
    at
}

/// Where the value before `at` ends: back over whitespace, `punctuation`
/// (the `,` before the next key, or the envelope's closing `}`) and
/// whitespace again.
fn value_end_before(bytes: &[u8], at: usize, punctuation: u8) -> Option<usize> {
    let mut at = at;
    let skip = |at: &mut usize| {
        while *at > 0 && bytes.get(*at - 1).is_some_and(|&b| is_whitespace(b)) {
            *at -= 1;
        }
    };
    skip(&mut at);
    if at == 0 || bytes.get(at - 1) != Some(&punctuation) {
        return None;
    }
    at -= 1;
    skip(&mut at);
    Some(at)
}

/// Where the value of the key that ends at `key_end` (just before its
/// closing quote) starts: past the quote, the colon and whitespace.
fn value_start(text: &str, key_end: usize) -> Option<usize> {
    let bytes = text.as_bytes();
    if bytes.get(key_end) != Some(&b'"') {
        return None;
    }
    let colon = skip_whitespace(bytes, key_end + 1);
    (bytes.get(colon) == Some(&b':')).then(|| skip_whitespace(bytes, colon + 1))
}

/// The envelope's fields as read in one pass.
#[derive(Default)]
struct Wire<'a> {
    id: Option<Text<'a>>,
    event_type: Option<Text<'a>>,
    created: Option<&'a RawValue>,
    livemode: Option<bool>,
    data: Option<Data<'a>>,
}

/// A value that should be a string.
enum Text<'a> {
    Str(Cow<'a, str>),
    Other,
}

/// What `data` turned out to be.
enum Data<'a> {
    Null,
    Object {
        /// Where the object starts, when the `data` key was not escaped.
        start: Option<usize>,
        /// Where it ends, when the key after it was not escaped.
        end: Option<usize>,
        /// The wrapped resource: the one `object` member, when it is an object.
        wrapped: Option<&'a RawValue>,
    },
    /// An array or a scalar: left to the slow reading.
    Other,
}

/// The envelope's known keys.
#[derive(Clone, Copy)]
enum Field {
    Id,
    Type,
    Created,
    Livemode,
    Data,
    Other,
}

/// A key of the envelope, with its text when it lies in the body (it was
/// spelled without escapes).
struct Key<'a> {
    field: Field,
    text: Option<&'a str>,
}

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Key<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_borrowed_str<E: de::Error>(self, key: &'de str) -> Result<Key<'de>, E> {
        Ok(Key {
            field: field(key),
            text: Some(key),
        })
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Key<'de>, E> {
        Ok(Key {
            field: field(key),
            text: None,
        })
    }
}

fn field(key: &str) -> Field {
    match key {
        "id" => Field::Id,
        "type" => Field::Type,
        "created" => Field::Created,
        "livemode" => Field::Livemode,
        "data" => Field::Data,
        _ => Field::Other,
    }
}

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_identifier(KeyVisitor)
    }
}

struct EnvelopeVisitor<'t> {
    text: &'t str,
}

impl<'de> Visitor<'de> for EnvelopeVisitor<'_> {
    type Value = Wire<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a Clink event envelope")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Wire<'de>, A::Error> {
        let mut wire = Wire::default();
        let mut seen = [false; 5];
        let mut once = |i: usize, name: &'static str| -> Result<(), A::Error> {
            if std::mem::replace(&mut seen[i], true) {
                Err(de::Error::duplicate_field(name))
            } else {
                Ok(())
            }
        };
        // `data`'s end is found from what follows it: the next key, or the
        // envelope's end.
        let mut data_before_next = false;
        let text = self.text;
        let end_data = |wire: &mut Wire<'de>, end: Option<usize>| {
            if let Some(Data::Object { end: data_end, .. }) = &mut wire.data {
                *data_end = end;
            }
        };
        while let Some(key) = map.next_key::<Key<'de>>()? {
            let key_text = key.text.filter(|key| within(text, key));
            if std::mem::take(&mut data_before_next) {
                let end = key_text.and_then(|key| {
                    // Back from the key's opening quote.
                    let quote = span_of(text, key).start.checked_sub(1)?;
                    value_end_before(text.as_bytes(), quote, b',')
                });
                end_data(&mut wire, end);
            }
            match key.field {
                Field::Id => {
                    once(0, "id")?;
                    wire.id = Some(map.next_value::<Text<'de>>()?);
                }
                Field::Type => {
                    once(1, "type")?;
                    wire.event_type = Some(map.next_value::<Text<'de>>()?);
                }
                Field::Created => {
                    once(2, "created")?;
                    wire.created = map.next_value::<Option<&'de RawValue>>()?;
                }
                Field::Livemode => {
                    once(3, "livemode")?;
                    wire.livemode = map.next_value::<Livemode>()?.0;
                }
                Field::Data => {
                    once(4, "data")?;
                    let start = key_text.and_then(|key| value_start(text, span_of(text, key).end));
                    wire.data = Some(map.next_value_seed(DataSeed { text, start })?);
                    data_before_next = true;
                }
                Field::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        if data_before_next {
            // `data` came last: back from the end, over the envelope's `}`.
            let end = value_end_before(text.as_bytes(), text.len(), b'}');
            end_data(&mut wire, end);
        }
        Ok(wire)
    }
}

/// Any JSON value, checked as strictly as parsing it into a
/// `serde_json::Value` would (numbers in range, strings without lone
/// surrogates), and thrown away.
struct Strict;

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor)
    }
}

struct StrictVisitor;

macro_rules! accept_scalars {
    ($value:expr; $($method:ident: $ty:ty),*) => {
        $(
            fn $method<E: de::Error>(self, _: $ty) -> Result<Self::Value, E> {
                Ok($value)
            }
        )*
    };
}

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Strict;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    accept_scalars!(Strict; visit_bool: bool, visit_i64: i64, visit_u64: u64, visit_f64: f64, visit_str: &str);

    fn visit_unit<E: de::Error>(self) -> Result<Strict, E> {
        Ok(Strict)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Strict, A::Error> {
        while seq.next_element::<Strict>()?.is_some() {}
        Ok(Strict)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Strict, A::Error> {
        while map.next_key::<Strict>()?.is_some() {
            map.next_value::<Strict>()?;
        }
        Ok(Strict)
    }
}

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor;

        impl<'de> Visitor<'de> for TextVisitor {
            type Value = Text<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }

            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Text<'de>, E> {
                Ok(Text::Str(Cow::Borrowed(v)))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Text<'de>, E> {
                Ok(Text::Str(Cow::Owned(v.to_owned())))
            }

            accept_scalars!(Text::Other; visit_bool: bool, visit_i64: i64, visit_u64: u64, visit_f64: f64);

            fn visit_unit<E: de::Error>(self) -> Result<Text<'de>, E> {
                Ok(Text::Other)
            }

            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Text<'de>, A::Error> {
                StrictVisitor.visit_seq(seq).map(|_| Text::Other)
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Text<'de>, A::Error> {
                StrictVisitor.visit_map(map).map(|_| Text::Other)
            }
        }

        deserializer.deserialize_any(TextVisitor)
    }
}

/// `livemode`: its value when it is a boolean.
struct Livemode(Option<bool>);

impl<'de> Deserialize<'de> for Livemode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct LivemodeVisitor;

        impl<'de> Visitor<'de> for LivemodeVisitor {
            type Value = Livemode;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }

            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Livemode, E> {
                Ok(Livemode(Some(v)))
            }

            accept_scalars!(Livemode(None); visit_i64: i64, visit_u64: u64, visit_f64: f64, visit_str: &str);

            fn visit_unit<E: de::Error>(self) -> Result<Livemode, E> {
                Ok(Livemode(None))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Livemode, A::Error> {
                StrictVisitor.visit_seq(seq).map(|_| Livemode(None))
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Livemode, A::Error> {
                StrictVisitor.visit_map(map).map(|_| Livemode(None))
            }
        }

        deserializer.deserialize_any(LivemodeVisitor)
    }
}

/// Reads `data`: each member's value checked as `RawValue` checks it, and
/// the `object` member kept.
struct DataSeed<'t> {
    text: &'t str,
    start: Option<usize>,
}

impl<'de> DeserializeSeed<'de> for DataSeed<'_> {
    type Value = Data<'de>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Data<'de>, D::Error> {
        deserializer.deserialize_any(self)
    }
}

/// Whether a member's key is `object`.
struct IsObject(bool);

impl<'de> Deserialize<'de> for IsObject {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct IsObjectVisitor;

        impl Visitor<'_> for IsObjectVisitor {
            type Value = IsObject;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a member name")
            }

            fn visit_str<E: de::Error>(self, key: &str) -> Result<IsObject, E> {
                Ok(IsObject(key == "object"))
            }
        }

        deserializer.deserialize_str(IsObjectVisitor)
    }
}

impl<'de> Visitor<'de> for DataSeed<'_> {
    type Value = Data<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Data<'de>, E> {
        Ok(Data::Null)
    }

    accept_scalars!(Data::Other; visit_bool: bool, visit_i64: i64, visit_u64: u64, visit_f64: f64, visit_str: &str);

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Data<'de>, A::Error> {
        while seq.next_element::<&'de RawValue>()?.is_some() {}
        Ok(Data::Other)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Data<'de>, A::Error> {
        let mut objects = 0usize;
        let mut object = None;
        while let Some(IsObject(is_object)) = map.next_key()? {
            if is_object {
                let value: &'de RawValue = map.next_value()?;
                if !within(self.text, value.get()) {
                    return Ok(Data::Other);
                }
                objects += 1;
                object = Some(value);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        // A second `object` is a duplicate key: left to the slow reading,
        // which names it.
        if objects > 1 {
            return Ok(Data::Other);
        }
        // One that is not an object makes it no wrapper.
        let wrapped = object.filter(|object| object.get().starts_with('{'));
        Ok(Data::Object {
            start: self.start,
            end: None,
            wrapped,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Well-formed bodies are read in the one pass, without falling back on
    /// the slow reading, and `data`'s span is exactly its object (or the
    /// object it wraps), wherever `data` sits and however the body is
    /// spaced: a span found wrongly would make the fast reading give up
    /// (same answer, twice the work), which only this test sees.
    #[test]
    fn well_formed_bodies_are_read_in_one_pass_with_the_exact_span() {
        let cases = [
            (r#"{"id":"e","type":"x","data":{"a":1}}"#, r#"{"a":1}"#),
            (r#"{"data":{"a":1},"id":"e","type":"x"}"#, r#"{"a":1}"#),
            (
                r#"{"id":"e","data":{"a":[1,{"b":2}]},"type":"x"}"#,
                r#"{"a":[1,{"b":2}]}"#,
            ),
            (
                "{ \"id\" : \"e\" ,\n \"type\":\"x\",\t\"data\" :\r\n {\"a\" : 1} \n}",
                "{\"a\" : 1}",
            ),
            (
                "{\"data\" :  {\"a\":1}  ,  \"id\":\"e\",\"type\":\"x\"}",
                r#"{"a":1}"#,
            ),
            (
                r#"{"id":"e","type":"x","data":{"object":{"o":1}}}"#,
                r#"{"o":1}"#,
            ),
            (r#"{"id":"e","type":"x","data":{}}"#, "{}"),
        ];
        for (body, data) in cases {
            let read = fast(body).unwrap_or_else(|| panic!("fell back on: {body}"));
            let envelope = read.unwrap_or_else(|e| panic!("{e:?}: {body}"));
            let span = envelope.data.unwrap_or_else(|| panic!("no data: {body}"));
            assert_eq!(&body[span], data, "{body}");
            assert_eq!(id_of(body, &envelope.id), "e");
        }
    }

    /// The id as text, whichever way it is kept.
    fn id_of<'a>(text: &'a str, id: &'a IdText) -> &'a str {
        match id {
            IdText::Span(range) => &text[range.clone()],
            IdText::Owned(id) => id,
        }
    }

    /// The fields both readings must agree on.
    fn summary(text: &str, envelope: Result<Envelope, EnvelopeError>) -> String {
        match envelope {
            Ok(e) => format!(
                "ok id={:?} type={} created={:?} livemode={:?} data={:?}",
                id_of(text, &e.id),
                e.event_type,
                e.created,
                e.livemode,
                e.data.map(|range| &text[range])
            ),
            Err(error) => format!("error {error:?}"),
        }
    }

    #[test]
    fn the_one_pass_reading_agrees_with_the_straightforward_one() {
        let bodies = [
            r#"{"id":"evt_1","type":"order.succeeded","data":{"orderId":"o1"}}"#,
            r#"{"id":"evt_1","type":"order.succeeded","data":{"object":{"orderId":"o1"}}}"#,
            r#" { "id" : "evt_1" , "type" : "x" , "data" : { "a" : 1 , "object" : { "b" : 2 } } } "#,
            r#"{"id":"evt_1","type":"x","data":{"object":{"a":1},"object":{"b":2}}}"#,
            r#"{"id":"evt_1","type":"x","data":{"object":"subscription","a":1}}"#,
            r#"{"id":"evt_1","type":"x","data":{"object":null}}"#,
            r#"{"id":"evt_1","type":"x","data":{"object":[1]}}"#,
            r#"{"id":"evt_1","type":"x","data":{}}"#,
            r#"{"id":"evt_1","type":"x","data":{ }}"#,
            r#"{"id":"evt_1","type":"x","data":null}"#,
            r#"{"id":"evt_1","type":"x","data":[{"object":{"a":1}}]}"#,
            r#"{"id":"evt_1","type":"x","data":"text"}"#,
            r#"{"id":"evt_1","type":"x","data":7}"#,
            r#"{"id":"evt_1","type":"x","d\u0061ta":{"a":1}}"#,
            r#"{"id":"evt_1","type":"x","data":{"obj\u0065ct":{"a":1}}}"#,
            r#"{"id":"evt_1","type":"x","data":{"\ud800":1,"object":{"a":1}}}"#,
            r#"{"id":"evt_1","type":"x","data":{"\ud800":1}}"#,
            r#"{"id":"evt_1","type":"x","data":{"a":"\ud800"}}"#,
            r#"{"id":"evt_1","type":"x","data":{"a":1e400}}"#,
            r#"{"id":"evt_1","type":"x","data":{"a":1},"data":{"b":2}}"#,
            r#"{"id":"evt_1","id":"evt_2","type":"x"}"#,
            r#"{"id":"ev\u0074_1","type":"ord\u0065r.succeeded"}"#,
            r#"{"id":"","type":"x"}"#,
            r#"{"id":7,"type":"x"}"#,
            r#"{"id":{"a":1e400},"type":"x"}"#,
            r#"{"id":["\ud800"],"type":"x"}"#,
            r#"{"id":null,"type":"x"}"#,
            r#"{"id":"e","type":""}"#,
            r#"{"id":"e","type":["x"]}"#,
            r#"{"id":"e"}"#,
            r#"{"type":"x"}"#,
            r#"{"id":"e","type":"x","created":1736942400000,"livemode":true}"#,
            r#"{"id":"e","type":"x","created":"2025-01-15T12:00:00.000Z","livemode":"yes"}"#,
            r#"{"id":"e","type":"x","created":{"a":1},"livemode":{"a":1e400}}"#,
            r#"{"id":"e","type":"x","created":null,"livemode":null}"#,
            r#"{"id":"e","type":"x","livemode":false,"livemode":true}"#,
            r#"{"id":"e","type":"x","other":{"a":[1,2,{"b":null}]},"data":{"a":1}}"#,
            r#"{"id":"e","type":"x","data":{"a":1}} trailing"#,
            r#"{"id":"e","type":"x","data":{"a":1}"#,
            r#"{"id":"e","type":"x",}"#,
            r#"{"id":"e	","type":"x"}"#,
            r#"{"id":"e\n","type":"x"}"#,
            "{\"id\":\"e\",\"type\":\"x\",\"data\":\r\n\t{\"a\":1}\n}",
            r#"{}"#,
            r#"{"data":{"a":1} , "id":"e","type":"x"}"#,
            "{\"data\": {\"a\":{\"b\":[1,2,\"}\"]}}\n,\n\"id\":\"e\",\"type\":\"x\"}",
            r#"{"data":{"a":1},"\u0069d":"e","type":"x"}"#,
            r#"{"data":{"object":{"a":1}},"\u0069d":"e","type":"x"}"#,
            r#"{"data":{},"id":"e","type":"x"}"#,
            r#"{"data":{"object":{}} ,"id":"e","type":"x"}"#,
        ];
        for body in bodies {
            assert_eq!(
                summary(body, read(body)),
                summary(body, slow(body)),
                "{body}"
            );
        }
    }

    /// JSON text from a small grammar: the envelope's keys and others,
    /// escapes, whitespace, nesting, and now and then something invalid.
    fn json() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let ws = prop_oneof![Just(""), Just(" "), Just("\n\t ")];
        let key = prop_oneof![
            Just("id"),
            Just("type"),
            Just("created"),
            Just("livemode"),
            Just("data"),
            Just("object"),
            Just("other"),
            Just("d\\u0061ta"),
            Just("obj\\u0065ct"),
            Just("\\ud800"),
        ];
        let scalar = prop_oneof![
            Just("\"evt_1\"".to_owned()),
            Just("\"order.succeeded\"".to_owned()),
            Just("\"\"".to_owned()),
            Just("\"e\\u0076t\"".to_owned()),
            Just("\"\\ud800\"".to_owned()),
            Just("1736942400000".to_owned()),
            Just("\"2025-01-15T12:00:00.000Z\"".to_owned()),
            Just("1e400".to_owned()),
            Just("-0.5".to_owned()),
            Just("true".to_owned()),
            Just("null".to_owned()),
            Just("}".to_owned()),
        ];
        let value = scalar.prop_recursive(3, 24, 4, move |inner| {
            let member = (key.clone(), ws.clone(), inner.clone())
                .prop_map(|(k, w, v)| format!("{w}\"{k}\"{w}:{w}{v}{w}"));
            prop_oneof![
                proptest::collection::vec(member, 0..5)
                    .prop_map(|members| format!("{{{}}}", members.join(","))),
                proptest::collection::vec(inner, 0..3)
                    .prop_map(|items| format!("[{}]", items.join(","))),
            ]
        });
        value.prop_map(|v| {
            if v.starts_with('{') {
                v
            } else {
                format!("{{\"data\":{v}}}")
            }
        })
    }

    /// The randomised tests (`seeded` in their path, so that a run can pick
    /// them out); `CLINK_TEST_SEED` repeats a run.
    mod seeded {
        use super::*;

        proptest::proptest! {
            #![proptest_config(crate::test_seed::config())]

            #[test]
            fn both_readings_agree_on_generated_bodies(body in json()) {
                proptest::prop_assert_eq!(summary(&body, read(&body)), summary(&body, slow(&body)));
            }
        }
    }

    /// Found by the test above: a repeated `object` in `data` (one spelled
    /// with an escape) in a body without an id. Both readings must say
    /// `DuplicateKey`, the error that comes first in their one order.
    #[test]
    fn a_repeated_data_object_comes_before_a_missing_id() {
        let body = r#"{"data":{"obj\u0065ct":"evt_1","object":"evt_1"}}"#;
        assert_eq!(read(body), Err(EnvelopeError::DuplicateKey));
        assert_eq!(slow(body), Err(EnvelopeError::DuplicateKey));
    }

    #[test]
    fn errors_come_in_one_order() {
        for (body, error) in [
            (
                r#"{"type":"x","id":"e","id":"f"} x"#,
                EnvelopeError::NotJson,
            ),
            (r#"{"id":"e","id":"f"}"#, EnvelopeError::DuplicateKey),
            (
                r#"{"data":{"object":{},"object":{}}}"#,
                EnvelopeError::DuplicateKey,
            ),
            (
                r#"{"type":"x","data":{"object":{"a":1}}}"#,
                EnvelopeError::MissingId,
            ),
            (
                r#"{"id":"e","data":{"object":1,"object":2},"type":7}"#,
                EnvelopeError::DuplicateKey,
            ),
            (r#"{"id":"e","type":7}"#, EnvelopeError::MissingType),
        ] {
            assert_eq!(read(body), Err(error), "{body}");
            assert_eq!(slow(body), Err(error), "{body}");
        }
    }

    #[test]
    fn usual_bodies_are_read_in_one_pass() {
        for body in [
            r#"{"id":"evt_1","type":"order.succeeded","data":{"orderId":"o1"}}"#,
            r#"{"id":"evt_1","object":"event","type":"x","data":{"object":{"a":1}}}"#,
            r#" { "id" : "evt_1" , "type" : "x" , "data" : { "a" : 1 } } "#,
            r#"{"id":"evt_1","type":"x","data":{}}"#,
            r#"{"id":"evt_1","type":"x","data":null}"#,
            r#"{"id":"evt_1","type":"x"}"#,
            r#"{"id":7,"type":"x"}"#,
            r#"{"data":{"a":1} , "id":"e","type":"x"}"#,
            r#"{"data":{},"id":"e","type":"x"}"#,
        ] {
            assert!(fast(body).is_some(), "{body}");
        }
    }

    #[test]
    fn ids_without_escapes_are_not_copied() {
        let body = r#"{"id":"evt_1","type":"x"}"#;
        assert_eq!(read(body).unwrap().id, IdText::Span(7..12));
        let escaped = r#"{"id":"evt\u005f1","type":"x"}"#;
        assert_eq!(read(escaped).unwrap().id, IdText::Owned("evt_1".into()));
    }
}
