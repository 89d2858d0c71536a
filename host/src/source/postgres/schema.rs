//! What the PostgreSQL source learns of its table when it opens: the
//! columns and how each is read, the checks on the key and timestamp
//! columns, and the statements it will run.

use crate::config::PostgresSourceConfig;
use crate::source::SourceError;
use deadpool_postgres::{Object, Pool};

/// How a column is selected and read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// `smallint`, `integer`, `bigint`: selected as `int8`.
    Int,
    /// `real`, `double precision`: selected as `float8`.
    Float,
    /// `boolean`.
    Bool,
    /// `numeric`: exact, as text.
    Decimal,
    /// `json`, `jsonb`: as text.
    Json,
    /// `bytea`.
    Bytes,
    /// `date`.
    Date,
    /// `timestamptz`: an instant.
    Instant,
    /// `timestamp`: a wall time in `source.timezone`.
    Wall,
    /// Anything else (`text`, `varchar`, `uuid`, enums, arrays, ...): the
    /// server's text form.
    Text,
}

impl Kind {
    /// The kind of a column by `information_schema.columns.data_type`.
    fn of(data_type: &str) -> Self {
        match data_type {
            "smallint" | "integer" | "bigint" => Kind::Int,
            "real" | "double precision" => Kind::Float,
            "boolean" => Kind::Bool,
            "numeric" => Kind::Decimal,
            "json" | "jsonb" => Kind::Json,
            "bytea" => Kind::Bytes,
            "date" => Kind::Date,
            "timestamp with time zone" => Kind::Instant,
            "timestamp without time zone" => Kind::Wall,
            _ => Kind::Text,
        }
    }

    /// The select-list expression for column `quoted`.
    fn select(self, quoted: &str) -> String {
        match self {
            Kind::Int => format!("{quoted}::int8"),
            Kind::Float => format!("{quoted}::float8"),
            Kind::Decimal | Kind::Json | Kind::Text => format!("{quoted}::text"),
            Kind::Bool | Kind::Bytes | Kind::Date | Kind::Instant | Kind::Wall => quoted.to_owned(),
        }
    }
}

/// One column as the server describes it.
pub(super) struct Column {
    /// Its name, as stored.
    pub(super) name: String,
    /// `information_schema.columns.data_type`.
    data_type: String,
    pub(super) kind: Kind,
    nullable: bool,
}

/// The table as the source reads it.
pub(super) struct Table {
    /// `"schema"."table"`, quoted as stored.
    pub(super) qualified: String,
    pub(super) columns: Vec<Column>,
    pub(super) ts_index: usize,
    pub(super) key_index: usize,
}

/// `name` as a quoted identifier.
fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Reads the table's columns and checks the key and timestamp columns.
/// Names match as written, else as PostgreSQL folds unquoted names (to
/// lower case).
pub(super) async fn describe(
    client: &Object,
    config: &PostgresSourceConfig,
    bad: &(dyn Fn(&str, String) -> SourceError + Sync),
) -> Result<Table, SourceError> {
    let transient =
        |e: tokio_postgres::Error| SourceError::Transient(crate::postgres::describe(&e));
    let mut found = None;
    for (schema, table) in [
        (config.schema.clone(), config.table.clone()),
        (config.schema.to_lowercase(), config.table.to_lowercase()),
    ] {
        let rows = client
            .query(
                "SELECT c.column_name::text, c.data_type::text, c.is_nullable = 'YES', t.table_type::text
                 FROM information_schema.columns c
                 JOIN information_schema.tables t USING (table_schema, table_name)
                 WHERE c.table_schema = $1 AND c.table_name = $2
                 ORDER BY c.ordinal_position",
                &[&schema, &table],
            )
            .await
            .map_err(transient)?;
        if !rows.is_empty() {
            found = Some((schema, table, rows));
            break;
        }
    }
    let Some((schema, table, rows)) = found else {
        return Err(bad(
            "table",
            format!(
                "no table or view `{}.{}` the user can see (it does not exist, or the user has no privilege on it: GRANT SELECT ON {}.{} TO <user>)",
                config.schema, config.table, config.schema, config.table
            ),
        ));
    };
    // A view's columns are all "nullable" to the catalog: its NOT NULL
    // cannot be checked, only a table's.
    let is_view = rows
        .first()
        .is_some_and(|r| r.get::<_, String>(3) != "BASE TABLE");
    let columns: Vec<Column> = rows
        .iter()
        .map(|r| {
            let data_type: String = r.get(1);
            Column {
                name: r.get(0),
                kind: Kind::of(&data_type),
                data_type,
                nullable: r.get(2),
            }
        })
        .collect();
    let qualified = format!("{}.{}", quote(&schema), quote(&table));
    let position = |key: &str, name: &str| {
        columns
            .iter()
            .position(|c| c.name == name)
            .or_else(|| columns.iter().position(|c| c.name == name.to_lowercase()))
            .ok_or_else(|| {
                bad(
                    key,
                    format!("table {schema}.{table} has no column `{name}`"),
                )
            })
    };
    let ts_index = position("timestamp.column", &config.timestamp.column)?;
    let ts = &columns[ts_index];
    if !matches!(ts.kind, Kind::Instant | Kind::Wall) {
        return Err(bad(
            "timestamp.column",
            format!(
                "column `{}` is {}: it must be a timestamptz or a timestamp (without time zone, read in source.timezone)",
                ts.name, ts.data_type
            ),
        ));
    }
    if ts.nullable && !is_view {
        return Err(bad("timestamp.column", format!("column `{}` is nullable: a row with a NULL timestamp would never be read; declare it NOT NULL", ts.name)));
    }
    let key_index = position("key_column", &config.key_column)?;
    let key = &columns[key_index];
    let text_key = matches!(key.data_type.as_str(), "text" | "character varying");
    if key.kind != Kind::Int && !text_key {
        return Err(bad(
            "key_column",
            format!(
                "column `{}` is {}: the key must be an integer (smallint, integer, bigint) or text (text, varchar)",
                key.name, key.data_type
            ),
        ));
    }
    if key.nullable && !is_view {
        return Err(bad(
            "key_column",
            format!(
                "column `{}` may be NULL: declare the key NOT NULL",
                key.name
            ),
        ));
    }
    Ok(Table {
        qualified,
        columns,
        ts_index,
        key_index,
    })
}

/// The statements, built once from the described table. Parameters: `$1`
/// the upper bound, `$2` the cursor's timestamp, `$3` its key (the
/// `after_key` forms), then the limit.
pub(super) struct Queries {
    pub(super) page_after_key: String,
    pub(super) page_at_ts: String,
    pub(super) count_after_key: String,
    pub(super) count_at_ts: String,
}

impl Queries {
    pub(super) fn new(table: &Table) -> Self {
        let ts_column = &table.columns[table.ts_index];
        let key_column = &table.columns[table.key_index];
        let ts = quote(&ts_column.name);
        let ts_type = if ts_column.kind == Kind::Instant {
            "timestamptz"
        } else {
            "timestamp"
        };
        // Byte order for text keys: the order a cursor's key compares in,
        // whatever the column's collation.
        let (key, key_type) = if key_column.kind == Kind::Int {
            (quote(&key_column.name), "int8")
        } else {
            (format!("{} COLLATE \"C\"", quote(&key_column.name)), "text")
        };
        let select = table
            .columns
            .iter()
            .map(|c| c.kind.select(&quote(&c.name)))
            .collect::<Vec<_>>()
            .join(", ");
        let t = &table.qualified;
        // The row comparison is one index range on (ts, key).
        let after_key = format!(
            "WHERE {ts} <= $1::{ts_type} AND ({ts}, {key}) > ($2::{ts_type}, $3::{key_type})"
        );
        let at_ts = format!("WHERE {ts} <= $1::{ts_type} AND {ts} >= $2::{ts_type}");
        let page = |filter: &str, limit: &str| {
            format!("SELECT {select} FROM {t} {filter} ORDER BY {ts}, {key} LIMIT {limit}")
        };
        let count = |filter: &str| format!("SELECT COUNT(*) FROM {t} {filter}");
        Queries {
            page_after_key: page(&after_key, "$4"),
            page_at_ts: page(&at_ts, "$3"),
            count_after_key: count(&after_key),
            count_at_ts: count(&at_ts),
        }
    }
}

/// Warns when no index starts with the timestamp column: every poll would
/// scan the table.
pub(super) async fn warn_without_index(pool: &Pool, table: &Table) {
    let Ok(client) = pool.get().await else { return };
    let ts = &table.columns[table.ts_index].name;
    let indexed = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_index i
               JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
               WHERE i.indrelid = to_regclass($1) AND a.attname = $2)",
            &[&table.qualified, ts],
        )
        .await
        .map(|r| r.get::<_, bool>(0))
        .unwrap_or(true);
    if !indexed {
        let key_column = &table.columns[table.key_index];
        // Text keys are compared byte-wise: an index serves the key half
        // of the cursor only in the same collation.
        let key = if key_column.kind == Kind::Int {
            quote(&key_column.name)
        } else {
            format!("{} COLLATE \"C\"", quote(&key_column.name))
        };
        tracing::warn!(table = %table.qualified, column = %ts, "no index starts with the timestamp column: every poll scans the table; CREATE INDEX ON {}({}, {key})", table.qualified, quote(ts));
    }
}
