//! What the SQLite source learns of its table when it opens: the columns
//! and their kinds, the checks on the key and timestamp columns, and the
//! statements it will run.

use super::{Kind, Queries};
use crate::config::SqliteSourceConfig;
use crate::source::SourceError;
use rusqlite::Connection;

pub(super) fn transient(e: rusqlite::Error) -> SourceError {
    SourceError::Transient(e.to_string())
}

/// What `PRAGMA table_info` says of one column.
pub(super) struct ColumnInfo {
    pub(super) name: String,
    pub(super) declared: String,
    not_null: bool,
    primary_key: bool,
}

/// The table's columns, in order; empty if there is no such table.
pub(super) fn table_info(conn: &Connection, table: &str) -> Result<Vec<ColumnInfo>, SourceError> {
    let mut stmt = conn
        .prepare("SELECT name, type, \"notnull\", pk FROM pragma_table_info(?1)")
        .map_err(transient)?;
    let rows = stmt
        .query_map([table], |r| {
            Ok(ColumnInfo {
                name: r.get(0)?,
                declared: r.get(1)?,
                not_null: r.get(2)?,
                primary_key: r.get::<_, i64>(3)? > 0,
            })
        })
        .map_err(transient)?;
    rows.collect::<Result<_, _>>().map_err(transient)
}

/// Checks the timestamp column (an INTEGER, NOT NULL) and the key column
/// (NOT NULL or the primary key); returns their positions.
pub(super) fn check_columns(
    config: &SqliteSourceConfig,
    info: &[ColumnInfo],
    schema: &dyn Fn(&str, String) -> SourceError,
) -> Result<(usize, usize), SourceError> {
    let find = |name: &str| info.iter().position(|c| c.name.eq_ignore_ascii_case(name));
    let missing = |key: &str, column: &str| {
        schema(
            key,
            format!("table `{}` has no column `{column}`", config.table),
        )
    };
    let ts_col = &config.timestamp.column;
    let ts_index = find(ts_col).ok_or_else(|| missing("timestamp.column", ts_col))?;
    let ts = &info[ts_index];
    if !ts.not_null {
        return Err(schema(
            "timestamp.column",
            format!("column `{ts_col}` is nullable: a row with a NULL timestamp would never be read; declare it NOT NULL"),
        ));
    }
    if !ts.declared.to_ascii_uppercase().contains("INT") {
        return Err(schema(
            "timestamp.column",
            format!("column `{ts_col}` is declared {:?}: it must be an INTEGER of epoch units (timestamp.unit)", ts.declared),
        ));
    }
    let key_col = &config.key_column;
    let key_index = find(key_col).ok_or_else(|| missing("key_column", key_col))?;
    if !info[key_index].not_null && !info[key_index].primary_key {
        return Err(schema(
            "key_column",
            format!("column `{key_col}` may be NULL: the key must be NOT NULL or the PRIMARY KEY"),
        ));
    }
    Ok((ts_index, key_index))
}

/// Warns when no index starts with the timestamp column: every poll would
/// scan the table.
pub(super) fn warn_without_index(conn: &Connection, config: &SqliteSourceConfig) {
    let (t, ts_col) = (&config.table, &config.timestamp.column);
    let has_index: bool = conn
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM pragma_index_list(?1) AS l \
             JOIN pragma_index_info(l.name) AS i WHERE i.seqno = 0 AND i.name = ?2 COLLATE NOCASE)",
            [t, ts_col],
            |r| r.get(0),
        )
        .unwrap_or(true);
    if !has_index {
        let key_col = &config.key_column;
        tracing::warn!(table = %t, column = %ts_col, "no index starts with the timestamp column: every poll scans the table; CREATE INDEX ON {t}({ts_col}, {key_col})");
    }
}

impl Kind {
    /// The kind of a column by its declared type.
    pub(super) fn declared(declared: &str) -> Self {
        let declared = declared.to_ascii_uppercase();
        if declared.contains("DECIMAL") || declared.contains("NUMERIC") {
            Kind::Decimal
        } else if declared.contains("BOOL") {
            Kind::Boolean
        } else if declared.contains("JSON") {
            Kind::Json
        } else {
            Kind::Plain
        }
    }
}

impl Queries {
    /// The page and count statements over the table's columns.
    pub(super) fn new(config: &SqliteSourceConfig, info: &[ColumnInfo]) -> Self {
        let select = info
            .iter()
            .map(|c| format!("\"{}\"", c.name))
            .collect::<Vec<_>>()
            .join(", ");
        let (t, ts, key) = (
            &config.table,
            format!("\"{}\"", config.timestamp.column),
            format!("\"{}\"", config.key_column),
        );
        let after_key = format!("WHERE {ts} <= ?1 AND ({ts} > ?2 OR ({ts} = ?2 AND {key} > ?3))");
        let at_ts = format!("WHERE {ts} <= ?1 AND {ts} >= ?2 AND ?3 IS NULL");
        let page = |filter: &str| {
            format!("SELECT {select} FROM \"{t}\" {filter} ORDER BY {ts}, {key} LIMIT ?4")
        };
        let count = |filter: &str| format!("SELECT COUNT(*) FROM \"{t}\" {filter}");
        Queries {
            page_after_key: page(&after_key),
            page_at_ts: page(&at_ts),
            count_after_key: count(&after_key),
            count_at_ts: count(&at_ts),
        }
    }
}
