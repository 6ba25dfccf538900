//! [`RedisStore`] as a [`FreshnessStore`]: one key per object holding the
//! newest version handled.

use std::sync::LazyLock;
use std::time::Duration;

use ::redis::{Script, Value};

use super::{one_key_script, unexpected, RedisStore};
use crate::events::{ObjectKey, Version};
use crate::store::{check_record, FreshnessStore};
use crate::store::{check_retention, ttl_millis, StoreError, StoreErrorKind};
use crate::BoxFuture;
use crate::ConfigError;
use crate::Timestamp;

/// Between the created time and the event id in a stored version.
const SEPARATOR: char = '|';

/// Sets `KEYS[1]` to the version `ARGV[1]|ARGV[2]` (created ms, event id)
/// for `ARGV[3]` ms, unless it holds a version at least as new. Answers 1
/// when it wrote, 0 when it kept the held version.
///
/// Lua numbers are doubles, exact only up to 2^53, and Lua's `<` on strings
/// follows the server's locale; so created times are compared as the
/// canonical decimal text Rust writes for an `i64`, and event ids byte by
/// byte, as Rust compares `str`.
pub(super) static RECORD: LazyLock<Script> = LazyLock::new(|| {
    one_key_script(&format!(
        r"
local function compare_bytes(a, b)
    local shared = math.min(#a, #b)
    for i = 1, shared do
        local x, y = string.byte(a, i), string.byte(b, i)
        if x ~= y then
            return x < y and -1 or 1
        end
    end
    if #a == #b then
        return 0
    end
    return #a < #b and -1 or 1
end

local function is_integer(text)
    return text == '0' or string.find(text, '^%-?[1-9]%d*$') ~= nil
end

local function compare_integers(a, b)
    local a_negative = string.byte(a, 1) == 45
    local b_negative = string.byte(b, 1) == 45
    if a_negative ~= b_negative then
        return a_negative and -1 or 1
    end
    local order
    if #a ~= #b then
        order = #a < #b and -1 or 1
    else
        order = compare_bytes(a, b)
    end
    return a_negative and -order or order
end

local held = redis.call('GET', KEYS[1])
if held then
    local separator = string.find(held, '{SEPARATOR}', 1, true)
    local created = separator and string.sub(held, 1, separator - 1)
    if not created or not is_integer(created) then
        return redis.error_reply('ERR freshness key holds a value the store did not write')
    end
    local order = compare_integers(created, ARGV[1])
    if order == 0 then
        order = compare_bytes(string.sub(held, separator + 1), ARGV[2])
    end
    if order >= 0 then
        return 0
    end
end
redis.call('SET', KEYS[1], ARGV[1] .. '{SEPARATOR}' .. ARGV[2], 'PX', ARGV[3])
return 1
"
    ))
});

impl RedisStore {
    /// The prefix of freshness keys unless
    /// [`with_freshness_prefix`](Self::with_freshness_prefix) sets another.
    pub const DEFAULT_FRESHNESS_PREFIX: &'static str = "clink:freshness";

    /// Keeps freshness records under `{prefix}:{family}:{id}`, e.g.
    /// `myapp:freshness:order:ord_123`, so that several apps can share one
    /// server. Idempotency keys are unaffected: the layer names those.
    #[must_use]
    pub fn with_freshness_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.freshness_prefix = prefix.into().into();
        self
    }

    /// Keeps each freshness record for `retention` after it was last written
    /// (default [`DEFAULT_FRESHNESS_RETENTION`](crate::store::DEFAULT_FRESHNESS_RETENTION)).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] unless `retention` is between 1 ms and
    /// [`MAX_TTL`](crate::store::MAX_TTL).
    pub fn with_freshness_retention(mut self, retention: Duration) -> Result<Self, ConfigError> {
        self.freshness_retention = check_retention(retention)?;
        Ok(self)
    }

    /// The prefix of freshness keys.
    #[must_use]
    pub fn freshness_prefix(&self) -> &str {
        &self.freshness_prefix
    }

    /// How long a freshness record is kept after it was last written.
    #[must_use]
    pub fn freshness_retention(&self) -> Duration {
        self.freshness_retention
    }

    fn freshness_key(&self, object: &ObjectKey) -> String {
        format!("{}:{}:{}", self.freshness_prefix, object.family, object.id)
    }
}

impl FreshnessStore for RedisStore {
    fn newest<'a>(
        &'a self, object: &'a ObjectKey,
    ) -> BoxFuture<'a, Result<Option<Version>, StoreError>> {
        Box::pin(async move {
            check_record(object, None)?;
            let key = self.freshness_key(object);
            let reply: Value = self
                .call(false, async |connection| {
                    ::redis::cmd("GET").arg(&key).query_async(connection).await
                })
                .await?;
            match reply {
                Value::Nil => Ok(None),
                Value::BulkString(bytes) => decode(&bytes).map(Some),
                other => Err(unexpected("GET of a freshness key", &other)),
            }
        })
    }

    fn record<'a>(
        &'a self, object: &'a ObjectKey, version: &'a Version,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            check_record(object, Some(version))?;
            let created = version.created().as_millis().to_string();
            let retention = ttl_millis("retention", self.freshness_retention)?.to_string();
            let key = self.freshness_key(object);
            match self
                .run(&RECORD, &key, &[&created, version.event_id(), &retention])
                .await?
            {
                Value::Int(0 | 1) => Ok(()),
                other => Err(unexpected("the freshness script", &other)),
            }
        })
    }
}

/// Reads a stored `<created ms>|<event id>`, in the canonical form the
/// script writes and checks.
fn decode(bytes: &[u8]) -> Result<Version, StoreError> {
    let version = std::str::from_utf8(bytes).ok().and_then(|text| {
        let (created, event_id) = text.split_once(SEPARATOR)?;
        let millis = created
            .parse::<i64>()
            .ok()
            .filter(|millis| millis.to_string() == created)?;
        Some(Version::new(Timestamp::from_millis(millis), event_id))
    });
    version.ok_or_else(|| {
        StoreError::new(
            StoreErrorKind::Protocol,
            "a freshness key holds a value the store did not write",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_versions_decode_strictly() {
        let v = |ms, id| Version::new(Timestamp::from_millis(ms), id);
        assert_eq!(decode(b"5|evt_1").ok(), Some(v(5, "evt_1")));
        assert_eq!(decode(b"-12|a|b").ok(), Some(v(-12, "a|b")));
        assert_eq!(decode(b"0|").ok(), Some(v(0, "")));
        let max = format!("{}|x", i64::MAX);
        assert_eq!(decode(max.as_bytes()).ok(), Some(v(i64::MAX, "x")));
        for bad in [
            &b""[..],
            b"evt_1",
            b"|evt_1",
            b"007|evt",
            b"+7|evt",
            b"-0|evt",
            b"1.5|evt",
            b"99999999999999999999|evt",
            b"5|\xff",
        ] {
            let err = decode(bad).expect_err("malformed");
            assert_eq!(err.kind(), StoreErrorKind::Protocol);
        }
    }
}
