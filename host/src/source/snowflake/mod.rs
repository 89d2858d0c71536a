//! The Snowflake source: a table read through `snowflake-connector-rs` with
//! the same `(ts, key)` cursor as every source, the bounds bound as
//! parameters and measured on Snowflake's clock (`CURRENT_TIMESTAMP`).
//!
//! **Warehouse cost.** A page query needs a running warehouse; polling one
//! every few seconds keeps it awake around the clock (auto-suspend never
//! comes). So each poll first asks `SELECT COUNT(*), MAX(ts) FROM t`, which
//! Snowflake answers from table metadata without a warehouse, and runs the
//! page query only when that answer changed since the last poll that read
//! everything, or when `max_staleness_ms` passed. Rows still inside the delay
//! window keep the page query running until they are read. The counts of
//! both kinds of query are kept ([`QueryCounts`]).

mod cells;
mod connect;

use super::{identity, Cursor, Key, Page, QueryCounts, Source, SourceError, SourceRow, Timestamp};
use crate::config::SnowflakeSourceConfig;
use crate::plugin::contract::Row;
use cells::Clock;
use chrono_tz::Tz;
use connect::Connection;
use snowflake_connector_rs::bind::{TimestampLtz, TimestampNtz};
use snowflake_connector_rs::{CellValue, DynamicRow, IntoStatement, PositionalBinds, Statement};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A polled Snowflake table.
pub struct SnowflakeSource {
    conn: Connection,
    columns: Vec<String>,
    ts_index: usize,
    key_index: usize,
    clock: Clock,
    /// The zone NTZ values are read in (UTC for an LTZ timestamp column).
    zone: Tz,
    sql: Queries,
    max_staleness: Duration,
    watch: Mutex<Watch>,
    probes: AtomicU64,
    page_queries: AtomicU64,
}

/// The statements, built once from the described table.
struct Queries {
    /// `SELECT COUNT(*), MAX(ts) FROM t`: metadata only.
    probe: String,
    /// `SELECT <every column> FROM t`.
    select: String,
    /// `SELECT COUNT(*) FROM t`.
    count: String,
    /// Rows after `(ts, key)` up to the bound: binds upper, ts, ts, key.
    after_key: String,
    /// Rows at or after `ts` up to the bound: binds upper, ts.
    at_ts: String,
    /// `ORDER BY ts, key`.
    order: String,
}

/// What the last poll that read everything below the bound saw.
#[derive(Default)]
struct Watch {
    settled: Option<Probe>,
    last_page_query: Option<Instant>,
}

/// The metadata answer: row count and newest timestamp.
#[derive(Debug, Clone, PartialEq)]
struct Probe {
    rows: i128,
    newest: Option<Timestamp>,
}

impl SnowflakeSource {
    /// Logs in and checks the table: it exists, the timestamp column is
    /// `TIMESTAMP_NTZ` or `TIMESTAMP_LTZ` and NOT NULL, the key column is a
    /// NOT NULL integer or text, and the role may select from it. `prefix`
    /// is the config key of this source.
    pub async fn open(
        config: &SnowflakeSourceConfig,
        prefix: &str,
        secrets: &crate::secrets::Secrets,
    ) -> Result<Self, SourceError> {
        let conn = Connection::new(config, prefix, secrets)?;
        let bad = |key: &str, message: String| SourceError::Config {
            key: format!("{prefix}.{key}"),
            message,
        };
        let table = format!("{}.{}.{}", config.database, config.schema, config.table);
        // DESCRIBE needs no warehouse. Rows: name, type, kind, null?, ...
        let described = conn
            .query(&Statement::new(format!("DESCRIBE TABLE {table}")))
            .await
            .map_err(|e| conn.error(&e))?;
        let info: Vec<(String, String, bool)> = described
            .iter()
            .map(|row| {
                let text = |i: usize| match row.value_at(i) {
                    Ok(CellValue::String(s)) => s.clone(),
                    _ => String::new(),
                };
                (text(0), text(1).to_ascii_uppercase(), text(3) == "Y")
            })
            .collect();
        let (ts_index, key_index, clock) = check_columns(config, &table, &info, &bad)?;
        let (ts_name, key_name) = (&info[ts_index].0, &info[key_index].0);

        let select = info
            .iter()
            .map(|(n, ..)| format!("\"{}\"", n.replace('"', "\"\"")))
            .collect::<Vec<_>>()
            .join(", ");
        let (ts, key) = (format!("\"{ts_name}\""), format!("\"{key_name}\""));
        let sql = Queries {
            probe: format!("SELECT COUNT(*), MAX({ts}) FROM {table}"),
            select: format!("SELECT {select} FROM {table}"),
            count: format!("SELECT COUNT(*) FROM {table}"),
            after_key: format!("WHERE {ts} <= ? AND ({ts} > ? OR ({ts} = ? AND {key} > ?))"),
            at_ts: format!("WHERE {ts} <= ? AND {ts} >= ?"),
            order: format!("ORDER BY {ts}, {key}"),
        };
        let source = Self {
            conn,
            columns: info.iter().map(|(n, ..)| n.to_ascii_lowercase()).collect(),
            ts_index,
            key_index,
            clock,
            zone: match clock {
                Clock::Ntz(zone) => zone,
                Clock::Ltz => Tz::UTC,
            },
            sql,
            max_staleness: Duration::from_millis(config.max_staleness_ms),
            watch: Mutex::new(Watch::default()),
            probes: AtomicU64::new(0),
            page_queries: AtomicU64::new(0),
        };
        // Also proves the role may SELECT from the table.
        source.probe().await?;
        Ok(source)
    }

    /// `{head} WHERE <rows after the cursor, up to upper> {tail}`, bound.
    fn range(
        &self,
        head: &str,
        after: &Cursor,
        upper: Timestamp,
        tail: &str,
    ) -> Statement<PositionalBinds> {
        let sql = |filter: &str| Statement::new_positional(format!("{head} {filter} {tail}"));
        match &after.key {
            Some(key) => {
                let s = self.bind(
                    self.bind(self.bind(sql(&self.sql.after_key), upper), after.ts),
                    after.ts,
                );
                match key {
                    Key::Int(i) => s.bind(*i),
                    Key::Text(t) => s.bind(t.clone()),
                }
            }
            None => self.bind(self.bind(sql(&self.sql.at_ts), upper), after.ts),
        }
    }

    /// A timestamp bound as the column's type.
    fn bind(
        &self,
        statement: Statement<PositionalBinds>,
        ts: Timestamp,
    ) -> Statement<PositionalBinds> {
        match self.clock {
            Clock::Ntz(zone) => statement.bind(
                TimestampNtz::try_from(cells::instant_to_wall(ts, zone))
                    .expect("a wall time from an instant is never a leap second"),
            ),
            Clock::Ltz => statement.bind(
                TimestampLtz::try_from(chrono::DateTime::from_timestamp_nanos(ts.0))
                    .expect("an instant is never a leap second"),
            ),
        }
    }

    /// Runs a statement, counting it in `counter`; failures mapped to
    /// "fix the config" or "try again".
    async fn run<S: IntoStatement + Clone>(
        &self,
        statement: &S,
        counter: Option<&AtomicU64>,
    ) -> Result<Vec<DynamicRow>, SourceError> {
        let rows = self
            .conn
            .query(statement)
            .await
            .map_err(|e| self.conn.error(&e))?;
        if let Some(counter) = counter {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        Ok(rows)
    }

    /// The cheap question: how many rows, and the newest timestamp.
    async fn probe(&self) -> Result<Probe, SourceError> {
        let rows = self
            .run(&Statement::new(self.sql.probe.clone()), Some(&self.probes))
            .await?;
        let row = rows
            .first()
            .ok_or_else(|| SourceError::Transient("COUNT(*) answered no row".into()))?;
        let count = match row.value_at(0) {
            Ok(CellValue::Integer(n)) => *n,
            other => {
                return Err(SourceError::Transient(format!(
                    "COUNT(*) answered {other:?}"
                )))
            }
        };
        Ok(Probe {
            rows: count,
            newest: row
                .value_at(1)
                .ok()
                .and_then(|c| cells::instant(c, self.zone)),
        })
    }

    /// The page query proper.
    async fn read_page(
        &self,
        after: &Cursor,
        upper: Timestamp,
        limit: usize,
    ) -> Result<Page, SourceError> {
        let tail = format!("{} LIMIT {limit}", self.sql.order);
        let statement = self.range(&self.sql.select, after, upper, &tail);
        let rows = self.run(&statement, Some(&self.page_queries)).await?;
        let full = rows.len() >= limit;
        let rows = rows
            .into_iter()
            .map(|row| self.source_row(row))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Page { rows, full })
    }

    fn source_row(&self, row: DynamicRow) -> Result<SourceRow, SourceError> {
        let (_, values) = row.into_parts();
        let ts = cells::instant(&values[self.ts_index], self.zone).ok_or_else(|| {
            SourceError::Transient(format!(
                "timestamp cell {:?} is not a timestamp",
                values[self.ts_index]
            ))
        })?;
        let key =
            match &values[self.key_index] {
                CellValue::Integer(i) => Key::Int(i64::try_from(*i).map_err(|_| {
                    SourceError::Transient(format!("key {i} does not fit in 64 bits"))
                })?),
                CellValue::String(s) => Key::Text(s.clone()),
                other => {
                    return Err(SourceError::Transient(format!(
                        "key cell {other:?} is not an integer or text"
                    )))
                }
            };
        let cells = values
            .into_vec()
            .into_iter()
            .map(|c| cells::value(c, self.zone))
            .collect();
        Ok(SourceRow {
            row: Row {
                identity: identity(&key, ts),
                cells,
            },
            cursor: Cursor::after(ts, key),
        })
    }
}

#[async_trait::async_trait]
impl Source for SnowflakeSource {
    fn columns(&self) -> &[String] {
        &self.columns
    }

    async fn now(&self) -> Result<Timestamp, SourceError> {
        // A constant expression: answered without a warehouse.
        let rows = self
            .run(&Statement::new("SELECT CURRENT_TIMESTAMP()"), None)
            .await?;
        rows.first()
            .and_then(|r| r.value_at(0).ok())
            .and_then(|c| cells::instant(c, Tz::UTC))
            .ok_or_else(|| {
                SourceError::Transient("CURRENT_TIMESTAMP() answered no timestamp".into())
            })
    }

    async fn page(
        &self,
        after: &Cursor,
        upper: Timestamp,
        limit: usize,
    ) -> Result<Page, SourceError> {
        let probe = self.probe().await?;
        {
            let watch = self.watch.lock().expect("watch lock");
            let fresh = watch
                .last_page_query
                .is_some_and(|t| t.elapsed() < self.max_staleness);
            if fresh && watch.settled.as_ref() == Some(&probe) {
                return Ok(Page::default());
            }
        }
        let page = self.read_page(after, upper, limit).await?;
        let mut watch = self.watch.lock().expect("watch lock");
        watch.last_page_query = Some(Instant::now());
        // Settled only if this poll read every row the probe counted: none
        // left past the page size, none waiting out the delay window.
        let everything_read = !page.full && probe.newest.is_none_or(|newest| newest <= upper);
        watch.settled = everything_read.then_some(probe);
        Ok(page)
    }

    async fn remaining(
        &self,
        after: &Cursor,
        upper: Timestamp,
    ) -> Result<Option<u64>, SourceError> {
        let statement = self.range(&self.sql.count, after, upper, "");
        let rows = self.run(&statement, Some(&self.page_queries)).await?;
        Ok(match rows.first().and_then(|r| r.value_at(0).ok()) {
            Some(CellValue::Integer(n)) => u64::try_from(*n).ok(),
            _ => None,
        })
    }

    fn query_counts(&self) -> QueryCounts {
        QueryCounts {
            probes: self.probes.load(Ordering::Relaxed),
            page_queries: self.page_queries.load(Ordering::Relaxed),
        }
    }
}

/// Checks the timestamp column (`TIMESTAMP_NTZ` or `TIMESTAMP_LTZ`, NOT
/// NULL) and the key column (an integer NUMBER or text, NOT NULL) among
/// `info` (name, type, nullable); returns their positions and the clock the
/// timestamps are read on.
fn check_columns(
    config: &SnowflakeSourceConfig,
    table: &str,
    info: &[(String, String, bool)],
    bad: &dyn Fn(&str, String) -> SourceError,
) -> Result<(usize, usize, Clock), SourceError> {
    // The index of the column `name`, which config key `key` names.
    let column = |key: &str, name: &str| {
        info.iter()
            .position(|(n, ..)| n.eq_ignore_ascii_case(name))
            .ok_or_else(|| bad(key, format!("table {table} has no column `{name}`")))
    };
    let ts_index = column("timestamp.column", &config.timestamp.column)?;
    let (ts_name, ts_type, ts_nullable) = &info[ts_index];
    let zone: Tz = *config.timezone.value().map_err(|_| {
        bad(
            "timezone",
            format!("{:?} is not an IANA time zone", config.timezone.text()),
        )
    })?;
    let clock = if ts_type.starts_with("TIMESTAMP_NTZ") {
        Clock::Ntz(zone)
    } else if ts_type.starts_with("TIMESTAMP_LTZ") {
        Clock::Ltz
    } else if ts_type.starts_with("TIMESTAMP_TZ") {
        return Err(bad("timestamp.column", format!("column `{ts_name}` is {ts_type}: TIMESTAMP_TZ is not supported (as in Adobe's connector); use TIMESTAMP_NTZ or TIMESTAMP_LTZ")));
    } else {
        return Err(bad(
            "timestamp.column",
            format!("column `{ts_name}` is {ts_type}: it must be TIMESTAMP_NTZ or TIMESTAMP_LTZ"),
        ));
    };
    if *ts_nullable {
        return Err(bad("timestamp.column", format!("column `{ts_name}` is nullable: a row with a NULL timestamp would never be read; declare it NOT NULL")));
    }
    let key_index = column("key_column", &config.key_column)?;
    let (key_name, key_type, key_nullable) = &info[key_index];
    let integer_key = key_type.starts_with("NUMBER") && key_type.ends_with(",0)");
    if !integer_key && !key_type.starts_with("VARCHAR") && !key_type.starts_with("TEXT") {
        return Err(bad(
            "key_column",
            format!("column `{key_name}` is {key_type}: the key must be an integer NUMBER or text"),
        ));
    }
    if *key_nullable {
        return Err(bad(
            "key_column",
            format!("column `{key_name}` may be NULL: declare the key NOT NULL"),
        ));
    }
    Ok((ts_index, key_index, clock))
}
