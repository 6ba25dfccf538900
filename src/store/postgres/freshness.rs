//! [`PostgresStore`] as a [`FreshnessStore`]: one row per object, in a
//! table of its own, holding the newest version handled.

use std::time::Duration;

use tokio_postgres::types::{ToSql, Type};

use super::schema::Relation;
use super::{millis_param, pg_error, PostgresStore};
use crate::events::{ObjectKey, Version};
use crate::store::{check_record, FreshnessStore};
use crate::store::{check_retention, StoreError};
use crate::BoxFuture;
use crate::ConfigError;
use crate::Timestamp;

/// The freshness SQL, written once for the store's table.
pub(super) struct Statements {
    table: String,
    relation: Relation,
    pub(super) schema: String,
    record: String,
    newest: String,
    pub(super) reap: String,
}

impl Statements {
    /// The statements of the freshness table that goes with `table`
    /// (validated): `<table>_freshness`, at most 58 bytes per part, with its
    /// index `<bare table>_freshness_idx`, at most 62: both within
    /// PostgreSQL's 63.
    pub(super) fn new(table: &str) -> Self {
        let table = format!("{table}_freshness");
        let relation = Relation::new(&table, "idx");
        let Relation { quoted, index, .. } = &relation;
        Self {
            schema: format!(
                "CREATE TABLE IF NOT EXISTS {quoted} (
    -- The object: its event family and its id, such as order and ord_123.
    family     text        NOT NULL,
    object_id  text        NOT NULL,
    -- The newest version handled: the event's created time (epoch ms), then
    -- its id, compared byte-wise whatever the database's collation.
    created_ms int8        NOT NULL,
    event_id   text        COLLATE \"C\" NOT NULL,
    -- When the record is forgotten, by the database's clock: the retention
    -- after it was last written.
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (family, object_id)
);
CREATE INDEX IF NOT EXISTS {index} ON {quoted} (expires_at);
"
            ),
            record: format!(
                "INSERT INTO {quoted} AS held (family, object_id, created_ms, event_id, expires_at)
VALUES ($1, $2, $3, $4, statement_timestamp() + $5 * interval '1 millisecond')
ON CONFLICT (family, object_id) DO UPDATE SET
    created_ms = excluded.created_ms,
    event_id   = excluded.event_id,
    expires_at = excluded.expires_at
WHERE (held.created_ms, held.event_id) < (excluded.created_ms, excluded.event_id)
   OR held.expires_at <= statement_timestamp()"
            ),
            newest: format!(
                "SELECT created_ms, event_id FROM {quoted}
WHERE family = $1 AND object_id = $2 AND expires_at > statement_timestamp()"
            ),
            reap: format!(
                "DELETE FROM {quoted}
WHERE (family, object_id) IN (
        SELECT family, object_id FROM {quoted} WHERE expires_at <= statement_timestamp()
        LIMIT $1 FOR UPDATE SKIP LOCKED)
  AND expires_at <= statement_timestamp()"
            ),
            table,
            relation,
        }
    }

    /// The quoted names of the table and its index, as `to_regclass` takes them.
    pub(super) fn relations(&self) -> [&String; 2] {
        [&self.relation.quoted, &self.relation.qualified_index]
    }
}

impl PostgresStore {
    /// Keeps each freshness record for `retention` after it was last written
    /// (default [`DEFAULT_FRESHNESS_RETENTION`](crate::store::DEFAULT_FRESHNESS_RETENTION)).
    /// Expired records read as absent at once; [`reap`](Self::reap) deletes them.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] unless `retention` is between 1 ms and
    /// [`MAX_TTL`](crate::store::MAX_TTL).
    pub fn with_freshness_retention(mut self, retention: Duration) -> Result<Self, ConfigError> {
        self.freshness_retention = check_retention(retention)?;
        Ok(self)
    }

    /// How long a freshness record is kept after it was last written.
    #[must_use]
    pub fn freshness_retention(&self) -> Duration {
        self.freshness_retention
    }

    /// The freshness table's name: the [`table`](Self::table)'s with
    /// `_freshness` appended.
    #[must_use]
    pub fn freshness_table(&self) -> &str {
        &self.sql.freshness.table
    }
}

impl FreshnessStore for PostgresStore {
    fn newest<'a>(
        &'a self, object: &'a ObjectKey,
    ) -> BoxFuture<'a, Result<Option<Version>, StoreError>> {
        Box::pin(async move {
            check_record(object, None)?;
            let params: [(&(dyn ToSql + Sync), Type); 2] =
                [(&object.family, Type::TEXT), (&object.id, Type::TEXT)];
            let row = self
                .pooled(async |client| {
                    client
                        .query_typed_opt(&self.sql.freshness.newest, &params)
                        .await
                        .map_err(|err| pg_error("cannot read the newest version", &err))
                })
                .await?;
            let Some(row) = row else {
                return Ok(None);
            };
            let read = |err| pg_error("unexpected freshness row", &err);
            let created: i64 = row.try_get(0).map_err(read)?;
            let event_id: String = row.try_get(1).map_err(read)?;
            Ok(Some(Version::new(
                Timestamp::from_millis(created),
                event_id,
            )))
        })
    }

    fn record<'a>(
        &'a self, object: &'a ObjectKey, version: &'a Version,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            check_record(object, Some(version))?;
            let created = version.created().as_millis();
            let event_id = version.event_id();
            let retention = millis_param("retention", self.freshness_retention)?;
            let params: [(&(dyn ToSql + Sync), Type); 5] = [
                (&object.family, Type::TEXT),
                (&object.id, Type::TEXT),
                (&created, Type::INT8),
                (&event_id, Type::TEXT),
                (&retention, Type::INT8),
            ];
            self.pooled(async |client| {
                client
                    .execute_typed(&self.sql.freshness.record, &params)
                    .await
                    .map_err(|err| pg_error("cannot record the newest version", &err))
            })
            .await?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_freshness_table_is_named_after_the_store_table() {
        let longest = format!("{}.{}", "s".repeat(48), "t".repeat(48));
        let sql = Statements::new(&longest);
        assert_eq!(sql.table, format!("{longest}_freshness"));
        let index = sql.relation.index.trim_matches('"');
        assert_eq!(index, format!("{}_freshness_idx", "t".repeat(48)));
        assert!(index.len() <= 63, "{index}");
        assert!(sql.schema.contains("event_id   text        COLLATE \"C\""));
    }
}
