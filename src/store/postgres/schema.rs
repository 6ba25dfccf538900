//! The SQL of [`PostgresStore`](super::PostgresStore), written once per
//! table name, and the rules a table name must follow.

use super::freshness;
use crate::ConfigError;

/// The store's SQL, written once for its tables.
pub(super) struct Statements {
    pub(super) table: String,
    /// The SQL of both tables.
    pub(super) schema: String,
    /// Whether both tables and their indexes exist, without taking any lock.
    pub(super) exists: String,
    pub(super) claim: String,
    pub(super) complete: String,
    pub(super) release: String,
    pub(super) reap: String,
    pub(super) freshness: freshness::Statements,
}

/// A table's quoted name and the quoted names of its index on `expires_at`.
pub(super) struct Relation {
    pub(super) quoted: String,
    /// The index's name alone, as `CREATE INDEX` takes it.
    pub(super) index: String,
    /// The index's name, qualified by the table's schema if it has one.
    pub(super) qualified_index: String,
}

impl Relation {
    /// The table `table` (validated) and its index `<bare table>_<index_suffix>`.
    pub(super) fn new(table: &str, index_suffix: &str) -> Self {
        let (schema, bare) = match table.split_once('.') {
            Some((schema, bare)) => (Some(schema), bare),
            None => (None, table),
        };
        let index = quote_part(&format!("{bare}_{index_suffix}"));
        let qualified_index = match schema {
            Some(schema) => format!("{}.{index}", quote_part(schema)),
            None => index.clone(),
        };
        Self {
            quoted: quote(table),
            index,
            qualified_index,
        }
    }
}

impl Statements {
    pub(super) fn new(table: &str) -> Self {
        let Relation {
            quoted,
            index,
            qualified_index,
        } = Relation::new(table, "expires_at_idx");
        let freshness = freshness::Statements::new(table);
        let exists = [&quoted, &qualified_index]
            .into_iter()
            .chain(freshness.relations())
            .map(|name| format!("to_regclass('{name}') IS NOT NULL"))
            .collect::<Vec<_>>()
            .join(" AND ");
        let end = "statement_timestamp() + $3 * interval '1 millisecond'";
        Self {
            table: table.to_owned(),
            schema: format!(
                "CREATE TABLE IF NOT EXISTS {quoted} (
    -- The caller's key, such as clink:live:evt_123.
    key         text        PRIMARY KEY,
    -- The holder's lease token while claimed; NULL once completed.
    lease_token text,
    -- When the lease (claimed) or the retention (completed) ends, by the database's clock.
    expires_at  timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS {index} ON {quoted} (expires_at);
{}",
                freshness.schema
            ),
            exists: format!("SELECT {exists}"),
            claim: format!(
                "INSERT INTO {quoted} AS held (key, lease_token, expires_at)
VALUES ($1, $2, {end})
ON CONFLICT (key) DO UPDATE SET
    lease_token = CASE WHEN held.expires_at <= statement_timestamp()
                       THEN excluded.lease_token ELSE held.lease_token END,
    expires_at  = CASE WHEN held.expires_at <= statement_timestamp()
                       THEN excluded.expires_at ELSE held.expires_at END
RETURNING lease_token,
    GREATEST(0, CEIL(EXTRACT(EPOCH FROM expires_at - statement_timestamp()) * 1000))::int8"
            ),
            complete: format!(
                "UPDATE {quoted} SET lease_token = NULL, expires_at = {end}
WHERE key = $1 AND lease_token = $2 AND expires_at > statement_timestamp()"
            ),
            release: format!(
                "DELETE FROM {quoted}
WHERE key = $1 AND lease_token = $2 AND expires_at > statement_timestamp()"
            ),
            reap: format!(
                "DELETE FROM {quoted}
WHERE key IN (SELECT key FROM {quoted} WHERE expires_at <= statement_timestamp()
              LIMIT $1 FOR UPDATE SKIP LOCKED)
  AND expires_at <= statement_timestamp()"
            ),
            freshness,
        }
    }
}

pub(super) fn check_table_name(name: &str) -> Result<(), ConfigError> {
    let mut parts = name.split('.');
    let valid = parts.by_ref().take(2).all(is_identifier) && parts.next().is_none();
    if valid {
        Ok(())
    } else {
        Err(ConfigError::new(format!(
            "table name {name:?} is not `table` or `schema.table` made of 1 to 48 \
             lowercase letters, digits and underscores, not starting with a digit"
        )))
    }
}

fn is_identifier(part: &str) -> bool {
    let mut chars = part.chars();
    matches!(chars.next(), Some('a'..='z' | '_'))
        && part.len() <= 48
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'))
}

/// Quotes a validated, possibly schema-qualified name.
pub(super) fn quote(name: &str) -> String {
    name.split('.')
        .map(quote_part)
        .collect::<Vec<_>>()
        .join(".")
}

pub(super) fn quote_part(part: &str) -> String {
    format!("\"{part}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_plain_identifiers() {
        for good in [
            "t",
            "_t",
            "clink_webhook_events",
            "app.dedup_2",
            &"x".repeat(48),
        ] {
            assert!(check_table_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "1t",
            "T",
            "a-b",
            "a b",
            "a.b.c",
            ".t",
            "t.",
            "t;drop table x",
            "\"t\"",
            &"x".repeat(49),
        ] {
            let err = check_table_name(bad).unwrap_err();
            assert!(err.to_string().contains("lowercase letters"), "{err}");
        }
    }

    #[test]
    fn schema_names_the_index_after_the_bare_table() {
        let sql = Statements::new("app.dedup");
        assert!(sql
            .schema
            .contains("CREATE TABLE IF NOT EXISTS \"app\".\"dedup\""));
        assert!(sql
            .schema
            .contains("INDEX IF NOT EXISTS \"dedup_expires_at_idx\" ON \"app\".\"dedup\""));
    }
}
