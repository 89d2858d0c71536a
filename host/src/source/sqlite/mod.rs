//! The embedded source: a table in an SQLite file, its timestamp an INTEGER
//! count of seconds, milliseconds or microseconds since the epoch.
//!
//! SQLite lives on this machine, so "the source's clock" is this host's clock.
//! Queries run on the blocking pool; the connection is opened read-only so a
//! pipeline can never change the customer's table.

use super::{identity, Cursor, Key, Page, QueryCounts, Source, SourceError, SourceRow, Timestamp};
use crate::config::{SqliteSourceConfig, TimestampUnit};
use crate::plugin::contract::{Row, Value};
use crate::profile::Stage;
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};
use schema::{check_columns, table_info, transient, warn_without_index};
use std::sync::{Arc, Mutex};

mod schema;

/// How a column's cells become contract values.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    /// By SQLite's storage class.
    Plain,
    /// The timestamp column: integer epoch units to an instant.
    Timestamp,
    /// Declared DECIMAL/NUMERIC: numbers as exact text.
    Decimal,
    /// Declared BOOLEAN: 0/1 as a bool.
    Boolean,
    /// Declared JSON: text as JSON.
    Json,
}

/// The statements, built once from the table's columns. The `at_ts` forms
/// (the initial cursor, no key yet) take the same parameters.
struct Queries {
    page_after_key: String,
    page_at_ts: String,
    count_after_key: String,
    count_at_ts: String,
}

/// A polled SQLite table.
pub struct SqliteSource {
    conn: Arc<Mutex<Connection>>,
    columns: Vec<String>,
    kinds: Vec<Kind>,
    key_index: usize,
    ts_index: usize,
    unit: TimestampUnit,
    sql: Queries,
    page_queries: std::sync::atomic::AtomicU64,
}

fn unit_nanos(unit: TimestampUnit) -> i64 {
    match unit {
        TimestampUnit::S => 1_000_000_000,
        TimestampUnit::Ms => 1_000_000,
        TimestampUnit::Us => 1_000,
    }
}

impl SqliteSource {
    /// Opens the table and checks it: the table exists, the key and timestamp
    /// columns exist, the timestamp is an INTEGER declared NOT NULL. `prefix`
    /// is the config key of this source, for error messages.
    pub fn open(config: &SqliteSourceConfig, prefix: &str) -> Result<Self, SourceError> {
        let schema = |key: &str, message: String| SourceError::Config {
            key: format!("{prefix}.{key}"),
            message,
        };
        let conn = Connection::open_with_flags(
            &config.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| {
            schema(
                "path",
                format!("cannot open {}: {e}", config.path.display()),
            )
        })?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(transient)?;
        let info = table_info(&conn, &config.table)?;
        if info.is_empty() {
            return Err(schema(
                "table",
                format!(
                    "table `{}` does not exist in {}",
                    config.table,
                    config.path.display()
                ),
            ));
        }
        let (ts_index, key_index) = check_columns(config, &info, &schema)?;
        let kinds = info
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i == ts_index {
                    Kind::Timestamp
                } else {
                    Kind::declared(&c.declared)
                }
            })
            .collect();
        let sql = Queries::new(config, &info);
        warn_without_index(&conn, config);
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            columns: info.iter().map(|c| c.name.to_ascii_lowercase()).collect(),
            kinds,
            key_index,
            ts_index,
            unit: config.timestamp.unit.unwrap_or_default(),
            sql,
            page_queries: Default::default(),
        })
    }

    /// A timestamp in the column's units, rounded down or up.
    fn native(&self, ts: Timestamp, round_up: bool) -> i64 {
        let unit = unit_nanos(self.unit);
        let floor = ts.0.div_euclid(unit);
        if round_up && ts.0.rem_euclid(unit) != 0 {
            floor + 1
        } else {
            floor
        }
    }

    /// The parameters `?1..?3` of the page and count queries, and whether
    /// the cursor has a key (which form of the query applies).
    fn bounds(&self, after: &Cursor, upper: Timestamp) -> (bool, [rusqlite::types::Value; 3]) {
        use rusqlite::types::Value;
        let upper = Value::Integer(self.native(upper, false));
        match &after.key {
            // Rows strictly after (ts, key): the cursor came from a row, so
            // its timestamp is exact in the column's units.
            Some(key) => (
                true,
                [
                    upper,
                    Value::Integer(self.native(after.ts, false)),
                    key_sql(key),
                ],
            ),
            // Rows at or after ts (the initial cursor): round up, so a bound
            // between two units never includes an earlier row.
            None => (
                false,
                [
                    upper,
                    Value::Integer(self.native(after.ts, true)),
                    Value::Null,
                ],
            ),
        }
    }

    fn count(&self, after: &Cursor, upper: Timestamp) -> Result<u64, SourceError> {
        let conn = self
            .conn
            .lock()
            .map_err(|_| SourceError::Transient("connection lock poisoned".into()))?;
        let (after_key, params) = self.bounds(after, upper);
        let sql = if after_key {
            &self.sql.count_after_key
        } else {
            &self.sql.count_at_ts
        };
        conn.query_row(sql, rusqlite::params_from_iter(params), |r| {
            r.get::<_, i64>(0)
        })
        .map(|n| n.max(0) as u64)
        .map_err(|e| SourceError::Transient(e.to_string()))
    }

    fn read_page(
        &self,
        after: &Cursor,
        upper: Timestamp,
        limit: usize,
    ) -> Result<Page, SourceError> {
        let conn = self
            .conn
            .lock()
            .map_err(|_| SourceError::Transient("connection lock poisoned".into()))?;
        let (after_key, [upper, from, key]) = self.bounds(after, upper);
        let sql = if after_key {
            &self.sql.page_after_key
        } else {
            &self.sql.page_at_ts
        };
        let transient = |e: rusqlite::Error| SourceError::Transient(e.to_string());
        self.page_queries
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut stmt = conn.prepare_cached(sql).map_err(transient)?;
        let mut rows = stmt
            .query(rusqlite::params![upper, from, key, limit as i64])
            .map_err(transient)?;
        let mut out = Vec::with_capacity(limit.min(10_000));
        let unit = unit_nanos(self.unit);
        while let Some(r) = rows.next().map_err(transient)? {
            let mut cells = Vec::with_capacity(self.kinds.len());
            for (i, kind) in self.kinds.iter().enumerate() {
                cells.push(cell(r.get_ref(i).map_err(transient)?, *kind, unit));
            }
            let ts = match r.get_ref(self.ts_index).map_err(transient)? {
                ValueRef::Integer(n) => Timestamp(n.saturating_mul(unit)),
                other => {
                    return Err(SourceError::Config {
                        key: "source.timestamp.column".into(),
                        message: format!(
                            "a row holds {:?} in the timestamp column, not an integer",
                            other.data_type()
                        ),
                    })
                }
            };
            let key = match r.get_ref(self.key_index).map_err(transient)? {
                ValueRef::Integer(n) => Key::Int(n),
                ValueRef::Text(t) => Key::Text(String::from_utf8_lossy(t).into_owned()),
                other => {
                    return Err(SourceError::Config {
                        key: "source.key_column".into(),
                        message: format!(
                            "a row holds {:?} in the key column, not an integer or text",
                            other.data_type()
                        ),
                    })
                }
            };
            let identity = identity(&key, ts);
            out.push(SourceRow {
                cursor: Cursor::after(ts, key),
                row: Row { identity, cells },
            });
        }
        let full = out.len() >= limit;
        Ok(Page { rows: out, full })
    }
}

fn key_sql(key: &Key) -> rusqlite::types::Value {
    match key {
        Key::Int(i) => rusqlite::types::Value::Integer(*i),
        Key::Text(s) => rusqlite::types::Value::Text(s.clone()),
    }
}

/// One SQLite cell as a contract value.
fn cell(v: ValueRef<'_>, kind: Kind, unit: i64) -> Value {
    let text = |t: &[u8]| String::from_utf8_lossy(t).into_owned();
    match (v, kind) {
        (ValueRef::Null, _) => Value::Null,
        (ValueRef::Integer(n), Kind::Timestamp) => {
            Value::Timestamp(Timestamp(n.saturating_mul(unit)).instant())
        }
        (ValueRef::Integer(n), Kind::Decimal) => Value::Decimal(n.to_string()),
        (ValueRef::Real(f), Kind::Decimal) => Value::Decimal(f.to_string()),
        (ValueRef::Text(t), Kind::Decimal) => Value::Decimal(text(t)),
        (ValueRef::Integer(n), Kind::Boolean) => Value::Boolean(n != 0),
        (ValueRef::Text(t), Kind::Json) => Value::Json(text(t)),
        (ValueRef::Integer(n), _) => Value::Integer(n),
        (ValueRef::Real(f), _) => Value::Float(f),
        (ValueRef::Text(t), _) => Value::Text(text(t)),
        (ValueRef::Blob(b), _) => Value::Binary(b.to_vec()),
    }
}

#[async_trait::async_trait]
impl Source for Arc<SqliteSource> {
    fn columns(&self) -> &[String] {
        &self.columns
    }

    async fn now(&self) -> Result<Timestamp, SourceError> {
        Ok(Timestamp::now())
    }

    async fn page(
        &self,
        after: &Cursor,
        upper: Timestamp,
        limit: usize,
    ) -> Result<Page, SourceError> {
        let this = Arc::clone(self);
        let after = after.clone();
        crate::profile::spawn_blocking(Stage::Source, move || this.read_page(&after, upper, limit))
            .await
            .map_err(|e| SourceError::Transient(format!("source task failed: {e}")))?
    }

    async fn remaining(
        &self,
        after: &Cursor,
        upper: Timestamp,
    ) -> Result<Option<u64>, SourceError> {
        let this = Arc::clone(self);
        let after = after.clone();
        crate::profile::spawn_blocking(Stage::Source, move || this.count(&after, upper))
            .await
            .map_err(|e| SourceError::Transient(format!("source task failed: {e}")))?
            .map(Some)
    }

    fn query_counts(&self) -> QueryCounts {
        QueryCounts {
            probes: 0,
            page_queries: self.page_queries.load(std::sync::atomic::Ordering::Relaxed),
        }
    }
}
