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

use super::event_type::decode_known;
use super::{EnvelopeError, EventType, Predecoded};
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
    match fast(text, None) {
        Some(read) => read.map(|(envelope, _)| envelope),
        None => slow(text),
    }
}

/// Reads the envelope of `text` as [`read`] does, and, when `typed` wants
/// events of its type decoded, the resource too, in the same pass: the
/// typed data is read where [`read`] would only step over it. That needs
/// `type` before `data`; whenever this pass cannot vouch for the answer
/// alone (the data does not fit its type, a key spelled with escapes, an
/// `object` member in data that is not the wrapper's first, anything
/// [`fast`] leaves to [`slow`]), the body is read again by [`read`], so the
/// envelope, and every error, is always the one [`read`] gives.
///
/// A data type's `Deserialize` that panicked would be read again too, so
/// that the panic, if it comes again, comes in the typed handler's decode,
/// where the router turns it into an outcome, as it always did.
pub(super) fn read_decoding(
    text: &str, typed: &dyn Fn(&EventType) -> bool,
) -> Result<(Envelope, Option<Predecoded>), EnvelopeError> {
    let decoding =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| fast(text, Some(typed))));
    match decoding {
        Ok(Some(Ok(read))) => Ok(read),
        _ => read(text).map(|envelope| (envelope, None)),
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
/// With `typed`, the resource of a type it wants is decoded on the way (or
/// `None`, when that cannot be vouched for).
fn fast(
    text: &str, typed: Option<&dyn Fn(&EventType) -> bool>,
) -> Option<Result<(Envelope, Option<Predecoded>), EnvelopeError>> {
    let mut de = serde_json::Deserializer::from_str(text);
    let wire = (&mut de)
        .deserialize_map(EnvelopeVisitor { text, typed })
        .ok()?;
    de.end().ok()?;
    let mut predecoded = None;
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
            decoded,
        }) => Some(match (wrapped, decoded) {
            (Some(object), _) => span_of(text, object.get()),
            (None, None) => object_span(text, start?, end?)?,
            (None, Some(Decoded::Whole(data))) => {
                let span = object_span(text, start?, end?)?;
                predecoded = Some(data);
                span
            }
            (
                None,
                Some(Decoded::Wrapped {
                    data,
                    at,
                    end: next,
                }),
            ) => {
                let outer = object_span(text, start?, end?)?;
                // The wrapped object ends before the next member of `data`,
                // or before `data`'s own `}` when it is the last.
                let close = match next {
                    Some(close) => close,
                    None => value_end_before(text.as_bytes(), outer.end, b'}')?,
                };
                predecoded = Some(data);
                object_span(text, at, close)?
            }
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
    let created = wire.created.and_then(|raw| created_of(raw.get()));
    Some(Ok((
        Envelope {
            id,
            event_type,
            created,
            livemode: wire.livemode,
            data,
        },
        predecoded,
    )))
}

/// `created` from its JSON text, as `Timestamp`'s `Deserialize` reads it.
/// The form Clink sends, epoch milliseconds written as a plain integer, is
/// read here directly; every other form (a date-time string, a sign, more
/// digits than always fit an `i64`, anything odd) goes through serde_json.
/// The slow reader keeps only the serde_json path, so the tests that compare
/// the two readers check that both give the same answer.
fn created_of(raw: &str) -> Option<Timestamp> {
    /// Eighteen digits are below `i64::MAX` whatever they are.
    const ALWAYS_FITS: usize = 18;
    let digits = raw.as_bytes();
    let plain = matches!(digits.first(), Some(b'1'..=b'9'))
        && digits.len() <= ALWAYS_FITS
        && digits.iter().all(u8::is_ascii_digit);
    if plain {
        let millis = digits.iter().fold(0_i64, |millis, &digit| {
            millis * 10 + i64::from(digit - b'0')
        });
        return Some(Timestamp::from_millis(millis));
    }
    serde_json::from_str::<Timestamp>(raw).ok()
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
        /// The resource decoded on the way, when it was.
        decoded: Option<Decoded>,
    },
    /// An array or a scalar: left to the slow reading.
    Other,
}

/// A resource decoded while `data` was read.
enum Decoded {
    /// `data` itself, read as the resource: it had no member named
    /// `object`, however spelled, which [`Replay`] makes sure of.
    Whole(Predecoded),
    /// The value of `data`'s first member, `object`, an object starting at
    /// `at`; `end` is where it ends when another member follows it.
    Wrapped {
        data: Predecoded,
        at: usize,
        end: Option<usize>,
    },
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
    typed: Option<&'t dyn Fn(&EventType) -> bool>,
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
                    // The resource is decoded on the way only when its type
                    // is known by now and wanted.
                    let decode = match (&self.typed, &wire.event_type) {
                        (Some(typed), Some(Text::Str(name))) => {
                            Some(EventType::from(name.as_ref()))
                                .filter(|t| !matches!(t, EventType::Unknown(_)) && typed(t))
                        }
                        _ => None,
                    };
                    wire.data = Some(map.next_value_seed(DataSeed {
                        text,
                        start,
                        decode,
                    })?);
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
    /// The type to decode the resource into on the way, if any.
    decode: Option<EventType>,
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
        if let Some(event_type) = &self.decode {
            return decode_data(self.text, self.start, event_type, map);
        }
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
            decoded: None,
        })
    }
}

/// Gives up decoding on the way: the body is read again without it.
fn give_up<E: de::Error>() -> E {
    E::custom("read again without decoding")
}

/// Reads the object `data` decoding the resource into `event_type`'s data:
/// the value of a first member `object` that is an object (the wrapper),
/// else `data` itself, its first key handed back to the decode.
fn decode_data<'de, A: MapAccess<'de>>(
    text: &str, start: Option<usize>, event_type: &EventType, mut map: A,
) -> Result<Data<'de>, A::Error> {
    let Some(KeyText(first)) = map.next_key::<KeyText<'de>>()? else {
        // `{}`: nothing worth decoding ahead.
        return Ok(Data::Object {
            start,
            end: None,
            wrapped: None,
            decoded: None,
        });
    };
    if first != "object" {
        let data = decode_known(
            event_type,
            Replay {
                first: Some(first),
                map,
            },
        )?;
        return Ok(Data::Object {
            start,
            end: None,
            wrapped: None,
            decoded: Some(Decoded::Whole(data)),
        });
    }
    // The wrapper: its `object` must be an object, seen where it starts.
    let Cow::Borrowed(key) = first else {
        return Err(give_up());
    };
    let at = within(text, key)
        .then(|| value_start(text, span_of(text, key).end))
        .flatten()
        .filter(|&at| text.as_bytes().get(at) == Some(&b'{'))
        .ok_or_else(give_up)?;
    let data = map.next_value_seed(KnownSeed(event_type))?;
    let mut end = None;
    let mut next = true;
    while let Some(KeyText(key)) = map.next_key::<KeyText<'de>>()? {
        // A second `object` is a repeated key, for the reading that names it.
        if key == "object" {
            return Err(give_up());
        }
        if std::mem::take(&mut next) {
            let Cow::Borrowed(key) = key else {
                return Err(give_up());
            };
            let quote = span_of(text, key).start.checked_sub(1);
            end = Some(
                quote
                    .filter(|_| within(text, key))
                    .and_then(|quote| value_end_before(text.as_bytes(), quote, b','))
                    .ok_or_else(give_up)?,
            );
        }
        map.next_value::<IgnoredAny>()?;
    }
    Ok(Data::Object {
        start,
        end: None,
        wrapped: None,
        decoded: Some(Decoded::Wrapped { data, at, end }),
    })
}

/// A member's key, borrowed from the body when it has no escapes.
struct KeyText<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for KeyText<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyTextVisitor;

        impl<'de> Visitor<'de> for KeyTextVisitor {
            type Value = KeyText<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a member name")
            }

            fn visit_borrowed_str<E: de::Error>(self, key: &'de str) -> Result<KeyText<'de>, E> {
                Ok(KeyText(Cow::Borrowed(key)))
            }

            fn visit_str<E: de::Error>(self, key: &str) -> Result<KeyText<'de>, E> {
                Ok(KeyText(Cow::Owned(key.to_owned())))
            }
        }

        deserializer.deserialize_str(KeyTextVisitor)
    }
}

/// Decodes a value into the data of its event type.
struct KnownSeed<'a>(&'a EventType);

impl<'de> DeserializeSeed<'de> for KnownSeed<'_> {
    type Value = Predecoded;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Predecoded, D::Error> {
        decode_known(self.0, deserializer)
    }
}

/// The rest of `data`, whose first key was read already, as a deserializer
/// of the resource: that key is handed out first, then the object's own,
/// each read here first so that a member named `object` (which would make
/// `data` a wrapper after all) stops the decode.
struct Replay<'de, A> {
    first: Option<Cow<'de, str>>,
    map: A,
}

impl<'de, A: MapAccess<'de>> Deserializer<'de> for Replay<'de, A> {
    type Error = A::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, A::Error> {
        visitor.visit_map(self)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map struct enum identifier ignored_any
    }
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Replay<'de, A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self, seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        use serde::de::value::{BorrowedStrDeserializer, StringDeserializer};
        let key = match self.first.take() {
            Some(first) => first,
            None => match self.map.next_key::<KeyText<'de>>()? {
                Some(KeyText(key)) if key == "object" => return Err(give_up()),
                Some(KeyText(key)) => key,
                None => return Ok(None),
            },
        };
        match key {
            Cow::Borrowed(key) => seed
                .deserialize(BorrowedStrDeserializer::new(key))
                .map(Some),
            Cow::Owned(key) => seed.deserialize(StringDeserializer::new(key)).map(Some),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        self.map.next_value_seed(seed)
    }

    fn size_hint(&self) -> Option<usize> {
        None
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
            let read = fast_envelope(body).unwrap_or_else(|| panic!("fell back on: {body}"));
            let envelope = read.unwrap_or_else(|e| panic!("{e:?}: {body}"));
            let span = envelope.data.unwrap_or_else(|| panic!("no data: {body}"));
            assert_eq!(&body[span], data, "{body}");
            assert_eq!(id_of(body, &envelope.id), "e");
        }
    }

    /// The one-pass reading without decoding on the way.
    fn fast_envelope(text: &str) -> Option<Result<Envelope, EnvelopeError>> {
        fast(text, None).map(|read| read.map(|(envelope, _)| envelope))
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

    /// Odd bodies on which every reading must agree.
    const AGREEMENT_CORPUS: &[&str] = &[
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
        r#"{"id":"e","type":"x","created":0}"#,
        r#"{"id":"e","type":"x","created":-0}"#,
        r#"{"id":"e","type":"x","created":-1736942400000}"#,
        r#"{"id":"e","type":"x","created":07}"#,
        r#"{"id":"e","type":"x","created":1.5e3}"#,
        r#"{"id":"e","type":"x","created":1736942400000.0}"#,
        r#"{"id":"e","type":"x","created":999999999999999999}"#,
        r#"{"id":"e","type":"x","created":9223372036854775807}"#,
        r#"{"id":"e","type":"x","created":9223372036854775808}"#,
        r#"{"id":"e","type":"x","created":99999999999999999999999}"#,
        r#"{"id":"e","type":"x","created":"1736942400000"}"#,
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

    #[test]
    fn created_read_directly_is_what_serde_json_reads() {
        let through_serde = |raw: &str| serde_json::from_str::<Timestamp>(raw).ok();
        let mut texts: Vec<String> = [
            "0",
            "-0",
            "1",
            "9",
            "07",
            "-1",
            "1736942400000",
            "1736942400000.0",
            "1.7e12",
            "999999999999999999",
            "1000000000000000000",
            "9223372036854775807",
            "9223372036854775808",
            "18446744073709551616",
            "\"1736942400000\"",
            "\"2025-01-15T12:00:00.000Z\"",
            "null",
            "true",
            "{}",
            "[]",
            "",
        ]
        .map(str::to_owned)
        .into();
        // Every length of plain integer up to past `u64`, with the largest
        // and the smallest digits, on either side of the direct read's
        // eighteen.
        for len in 1..=21 {
            texts.push("9".repeat(len));
            texts.push(format!("1{}", "0".repeat(len - 1)));
        }
        let mut direct = 0;
        for text in &texts {
            assert_eq!(created_of(text), through_serde(text), "{text}");
            direct += usize::from(created_of(text).is_some());
        }
        // The inputs reach both sides of every branch: some read, some not.
        assert!(direct > 0 && direct < texts.len());
        assert_eq!(
            created_of("1736942400000"),
            Some(Timestamp::from_millis(1_736_942_400_000))
        );
    }

    #[test]
    fn the_one_pass_reading_agrees_with_the_straightforward_one() {
        for body in AGREEMENT_CORPUS {
            assert_eq!(
                summary(body, read(body)),
                summary(body, slow(body)),
                "{body}"
            );
        }
    }

    /// Every known type wanted, as a router with a handler for each.
    fn all_types(event_type: &EventType) -> bool {
        !matches!(event_type, EventType::Unknown(_))
    }

    /// What reading with decoding on the way gives, checked against the
    /// plain reading: the same envelope or error, and a resource decoded
    /// on the way only when decoding its span gives that same value.
    /// Returns whether it was decoded on the way.
    fn check_decoding(body: &str) -> bool {
        let decoding = read_decoding(body, &all_types);
        let (envelope, predecoded) = match decoding {
            Ok((envelope, predecoded)) => (Ok(envelope), predecoded),
            Err(error) => (Err(error), None),
        };
        let data = envelope.as_ref().ok().and_then(|e| e.data.clone());
        let event_type = envelope.as_ref().ok().map(|e| e.event_type.clone());
        assert_eq!(summary(body, envelope), summary(body, read(body)), "{body}");
        let Some(predecoded) = predecoded else {
            return false;
        };
        let span = &body[data.unwrap_or_else(|| panic!("decoded without data: {body}"))];
        match event_type.map(|t| t.family().to_owned()).as_deref() {
            Some("order") => assert_eq!(
                predecoded.take::<crate::data::Order>(),
                Some(serde_json::from_str(span).unwrap()),
                "{body}"
            ),
            Some("payment_method") => assert_eq!(
                predecoded.take::<serde_json::Value>(),
                Some(serde_json::from_str(span).unwrap()),
                "{body}"
            ),
            other => panic!("a type the tests do not send: {other:?}"),
        }
        true
    }

    /// The same body with the unknown type `x` as an order event and as an
    /// event whose data is any JSON.
    fn with_known_types(body: &str) -> [String; 3] {
        [
            body.to_owned(),
            body.replace(r#""x""#, r#""order.succeeded""#),
            body.replace(r#""x""#, r#""payment_method.added""#),
        ]
    }

    #[test]
    fn decoding_on_the_way_agrees_with_reading_then_decoding() {
        for body in AGREEMENT_CORPUS {
            for body in with_known_types(body) {
                check_decoding(&body);
            }
        }
    }

    #[test]
    fn usual_bodies_are_decoded_on_the_way_and_others_read_again() {
        for body in [
            r#"{"id":"evt_1","type":"order.succeeded","data":{"orderId":"o1","amountTotal":19.99}}"#,
            r#"{"id":"evt_1","object":"event","type":"order.succeeded","data":{"object":{"orderId":"o1"}}}"#,
            r#"{"type":"order.succeeded","data":{"object":{"orderId":"o1"},"previous":{"a":1}},"id":"evt_1"}"#,
            " { \"type\" : \"order.succeeded\" , \"data\" : { \"object\" : { \"orderId\" : \"o1\" } \n } , \"id\" : \"e\" } ",
            r#"{"type":"order.succeeded","data":{"orderId":"o1","note":"a \"quoted\" note"},"id":"evt_1"}"#,
            r#"{"type":"payment_method.added","data":{"a":[1,{"b":2}]},"id":"evt_1"}"#,
            r#"{"type":"payment_method.added","data":{"object":{"a":1}},"id":"evt_1"}"#,
            // Escapes elsewhere, and `object` deeper in the resource.
            r#"{"id":"evt_1","type":"order.succeeded","data":{"orderId":"o\u0031","n\u006fte":"x"}}"#,
            r#"{"id":"evt_1","type":"payment_method.added","data":{"card":{"object":{"a":1}}}}"#,
        ] {
            assert!(check_decoding(body), "not decoded on the way: {body}");
        }
        for body in [
            // `type` after `data`: not known in time.
            r#"{"id":"evt_1","data":{"orderId":"o1"},"type":"order.succeeded"}"#,
            // An `object` member that is not the first: read again.
            r#"{"id":"evt_1","type":"order.succeeded","data":{"orderId":"o1","object":{"a":1}}}"#,
            r#"{"id":"evt_1","type":"order.succeeded","data":{"orderId":"o1","object":"order"}}"#,
            // `object` spelled with an escape, first or later.
            r#"{"id":"evt_1","type":"order.succeeded","data":{"obj\u0065ct":{"orderId":"o1"}}}"#,
            r#"{"id":"evt_1","type":"order.succeeded","data":{"orderId":"o1","obj\u0065ct":1}}"#,
            // A wrapper whose `object` is not an object, or comes twice.
            r#"{"id":"evt_1","type":"order.succeeded","data":{"object":"order","orderId":"o1"}}"#,
            r#"{"id":"evt_1","type":"order.succeeded","data":{"object":{},"object":{}}}"#,
            // Data that does not fit the type, and empty data.
            r#"{"id":"evt_1","type":"order.succeeded","data":{"amountTotal":"lots"}}"#,
            r#"{"id":"evt_1","type":"order.succeeded","data":{}}"#,
            // A type nobody decodes into.
            r#"{"id":"evt_1","type":"wallet.topped_up","data":{"a":1}}"#,
        ] {
            assert!(!check_decoding(body), "decoded on the way: {body}");
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
            Just("\"payment_method.added\"".to_owned()),
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

    /// Envelopes of a type decoded on the way (or not known), `type`
    /// before `data`, with `data` from a grammar of the order's fields,
    /// `object` members, escapes, whitespace and now and then something
    /// invalid; the id before or after `data`, or missing.
    fn typed_json() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let ws = prop_oneof![Just(""), Just(" "), Just("\n\t ")];
        let key = prop_oneof![
            4 => Just("orderId"),
            4 => Just("note"),
            4 => Just("status"),
            4 => Just("other"),
            2 => Just("object"),
            1 => Just("obj\\u0065ct"),
        ];
        // Mostly strings, which fit any field of the order, and now and
        // then a number, an escape or a stray brace.
        let scalar = prop_oneof![
            8 => Just("\"o1\"".to_owned()),
            4 => Just("\"a \\\"quoted\\\" note\"".to_owned()),
            2 => Just("null".to_owned()),
            1 => Just("19.99".to_owned()),
            1 => Just("1e400".to_owned()),
            1 => Just("\"\\u00e9\"".to_owned()),
            1 => Just("true".to_owned()),
            1 => Just("}".to_owned()),
        ];
        let ws_inner = ws.clone();
        let member = move |value: BoxedStrategy<String>| {
            (key.clone(), ws_inner.clone(), value)
                .prop_map(|(k, w, v)| format!("{w}\"{k}\"{w}:{w}{v}{w}"))
        };
        let object = {
            let member = member.clone();
            move |value: BoxedStrategy<String>| {
                proptest::collection::vec(member(value), 0..5)
                    .prop_map(|members| format!("{{{}}}", members.join(",")))
            }
        };
        let flat = object(scalar.clone().boxed());
        let value = scalar
            .clone()
            .prop_recursive(3, 24, 4, {
                let object = object.clone();
                move |inner| {
                    prop_oneof![
                        object(inner.clone().boxed()),
                        proptest::collection::vec(inner, 0..3)
                            .prop_map(|items| format!("[{}]", items.join(","))),
                    ]
                }
            })
            .boxed();
        // The wrapper: `object` first, then other members.
        let wrapped = (
            flat.clone(),
            proptest::collection::vec(member(scalar.boxed()), 0..3),
        )
            .prop_map(|(object, rest)| {
                let rest: String = rest.iter().map(|member| format!(",{member}")).collect();
                format!("{{\"object\":{object}{rest}}}")
            });
        let data = prop_oneof![flat, object(value), wrapped];
        let event_type = prop_oneof![
            3 => Just("order.succeeded"),
            2 => Just("payment_method.added"),
            1 => Just("wallet.topped_up"),
        ];
        let tail = prop_oneof![
            Just(""),
            Just(",\"id\":\"evt_2\""),
            Just(",\"livemode\":true"),
            Just(",\"type\":\"x\""),
        ];
        (event_type, ws, data, tail, any::<bool>()).prop_map(
            |(event_type, w, data, tail, id_first)| {
                let id = if id_first { "\"id\":\"evt_1\"," } else { "" };
                format!("{{{id}\"type\":\"{event_type}\",{w}\"data\":{w}{data}{w}{tail}}}")
            },
        )
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

            #[test]
            fn decoding_on_the_way_agrees_on_generated_bodies(body in json()) {
                for body in with_known_types(&body) {
                    check_decoding(&body);
                }
            }

            #[test]
            fn decoding_on_the_way_agrees_on_generated_typed_bodies(body in typed_json()) {
                check_decoding(&body);
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
            assert!(fast_envelope(body).is_some(), "{body}");
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
