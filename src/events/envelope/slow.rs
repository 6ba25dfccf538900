//! The straightforward envelope reader: the rules the one-pass reader in
//! [`super`] follows, and what it falls back to when it cannot decide.

#[allow(clippy::wildcard_imports)]
use super::*;

/// The straightforward reading, whose rules [`fast`] follows: the envelope
/// read in one pass with a visitor that notes a repeated key, then a second,
/// shallow pass over `data` alone for a `data.object` wrapper.
pub(super) fn slow(text: &str) -> Result<Envelope, EnvelopeError> {
    // One pass over the body; only an object is read (never an array).
    let wire: WireEnvelope<'_> = serde_json::from_str(text).map_err(|_| EnvelopeError::NotJson)?;
    if wire.duplicate {
        return Err(EnvelopeError::DuplicateKey);
    }
    // `data.object` wraps the resource when it is an object. Only an
    // object is a wrapper: a second, shallow pass over `data` alone.
    // `"data": null` is no data, as an absent `data` is (both read as `null`).
    let mut data = wire.data.filter(|raw| raw.get() != "null");
    if let Some(raw) = data.filter(|raw| raw.get().starts_with('{')) {
        let wrapped: WireWrapped<'_> =
            serde_json::from_str(raw.get()).map_err(|_| EnvelopeError::NotJson)?;
        if wrapped.duplicate {
            return Err(EnvelopeError::DuplicateKey);
        }
        if let Some(object) = wrapped.object.filter(|o| o.get().starts_with('{')) {
            data = Some(object);
        }
    }
    let id = match wire.id {
        Some(serde_json::Value::String(id)) if !id.is_empty() => IdText::Owned(id.into()),
        _ => return Err(EnvelopeError::MissingId),
    };
    let event_type = match wire.event_type {
        Some(serde_json::Value::String(t)) if !t.is_empty() => EventType::from(t.as_str()),
        _ => return Err(EnvelopeError::MissingType),
    };
    // A `created` in a form nobody reported is not worth refusing a
    // verified delivery over; it reads as absent.
    let created = wire
        .created
        .and_then(|raw| serde_json::from_str::<Timestamp>(raw.get()).ok());
    let livemode = wire.livemode.and_then(|v| v.as_bool());
    let data = data.map(|resource| span_of(text, resource.get()));
    Ok(Envelope {
        id,
        event_type,
        created,
        livemode,
        data,
    })
}

/// The envelope as [`slow`] reads it: the fields it needs, raw where they
/// are read later, and whether any of them came twice.
#[derive(Default)]
struct WireEnvelope<'a> {
    id: Option<serde_json::Value>,
    event_type: Option<serde_json::Value>,
    created: Option<&'a RawValue>,
    livemode: Option<serde_json::Value>,
    data: Option<&'a RawValue>,
    duplicate: bool,
}

/// A key of the envelope, or of the `data` wrapper, as `serde` reads an
/// identifier (escapes already resolved, so `"\u0069d"` is `id`).
enum SlowKey {
    Id,
    Type,
    Created,
    Livemode,
    Data,
    Object,
    Other,
}

impl<'de> Deserialize<'de> for SlowKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SlowKeyVisitor;

        impl Visitor<'_> for SlowKeyVisitor {
            type Value = SlowKey;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }

            fn visit_str<E: de::Error>(self, key: &str) -> Result<SlowKey, E> {
                Ok(match key {
                    "id" => SlowKey::Id,
                    "type" => SlowKey::Type,
                    "created" => SlowKey::Created,
                    "livemode" => SlowKey::Livemode,
                    "data" => SlowKey::Data,
                    "object" => SlowKey::Object,
                    _ => SlowKey::Other,
                })
            }
        }

        deserializer.deserialize_identifier(SlowKeyVisitor)
    }
}

/// Reads the next value into `slot`, or skips it and notes the duplicate
/// when `slot` was already filled by an earlier copy of the key.
fn fill<'de, A, T>(
    map: &mut A, seen: &mut bool, slot: &mut Option<T>, duplicate: &mut bool,
) -> Result<(), A::Error>
where
    A: MapAccess<'de>,
    T: Deserialize<'de>,
{
    if std::mem::replace(seen, true) {
        *duplicate = true;
        map.next_value::<IgnoredAny>()?;
    } else {
        *slot = Some(map.next_value()?);
    }
    Ok(())
}

impl<'de: 'a, 'a> Deserialize<'de> for WireEnvelope<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct WireEnvelopeVisitor<'a>(PhantomData<&'a ()>);

        impl<'de: 'a, 'a> Visitor<'de> for WireEnvelopeVisitor<'a> {
            type Value = WireEnvelope<'a>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a Clink event envelope (a JSON object)")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut wire = WireEnvelope::default();
                // Seen flags apart from the values: `"id": null` then `"id": "e"`
                // is a duplicate too.
                let mut seen = [false; 5];
                let dup = &mut wire.duplicate;
                while let Some(key) = map.next_key::<SlowKey>()? {
                    match key {
                        SlowKey::Id => fill(&mut map, &mut seen[0], &mut wire.id, dup)?,
                        SlowKey::Type => fill(&mut map, &mut seen[1], &mut wire.event_type, dup)?,
                        SlowKey::Created => fill(&mut map, &mut seen[2], &mut wire.created, dup)?,
                        SlowKey::Livemode => {
                            fill(&mut map, &mut seen[3], &mut wire.livemode, dup)?;
                        }
                        SlowKey::Data => fill(&mut map, &mut seen[4], &mut wire.data, dup)?,
                        SlowKey::Object | SlowKey::Other => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(wire)
            }
        }

        deserializer.deserialize_map(WireEnvelopeVisitor(PhantomData))
    }
}

/// The `data` wrapper: its `object`, raw, and whether `object` came twice.
#[derive(Default)]
struct WireWrapped<'a> {
    object: Option<&'a RawValue>,
    duplicate: bool,
}

impl<'de: 'a, 'a> Deserialize<'de> for WireWrapped<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct WrappedVisitor<'a>(PhantomData<&'a ()>);

        impl<'de: 'a, 'a> Visitor<'de> for WrappedVisitor<'a> {
            type Value = WireWrapped<'a>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut wrapped = WireWrapped::default();
                let mut seen = false;
                while let Some(key) = map.next_key::<SlowKey>()? {
                    if matches!(key, SlowKey::Object) {
                        fill(
                            &mut map,
                            &mut seen,
                            &mut wrapped.object,
                            &mut wrapped.duplicate,
                        )?;
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(wrapped)
            }
        }

        deserializer.deserialize_map(WrappedVisitor(PhantomData))
    }
}
