//! The PostgreSQL source: a table read through tokio-postgres with the same
//! `(ts, key)` cursor as every source, its bounds bound as parameters and
//! measured on the server's clock (`clock_timestamp()`).
//!
//! The timestamp column is a `timestamptz` (an instant) or a `timestamp`
//! (a wall-clock time, read in `source.timezone`, as Snowflake NTZ is). A
//! text key is ordered and compared byte-wise (`COLLATE "C"`), so the order
//! the cursor stands in is the same whatever the database's collation.
//! There is no warehouse to keep asleep: a poll is one indexed page query.

mod schema;

use super::{identity, Cursor, Key, Page, QueryCounts, Source, SourceError, SourceRow, Timestamp};
use crate::config::PostgresSourceConfig;
use crate::plugin::contract::{Row, Value};
use crate::source::wall::{instant_to_wall, wall_to_instant};
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use chrono_tz::Tz;
use deadpool_postgres::Pool;
use schema::{Kind, Queries};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio_postgres::types::ToSql;

/// A source asks one query at a time; the second connection serves the
/// backfill count beside a page.
const POOL_SIZE: usize = 2;

/// How long waiting for, or making, a connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A polled PostgreSQL table.
pub struct PostgresSource {
    pool: Pool,
    /// `pipelines.NAME.source`, for errors.
    prefix: String,
    columns: Vec<String>,
    kinds: Vec<Kind>,
    ts_index: usize,
    key_index: usize,
    /// `None`: the timestamp column is a `timestamptz`; a zone: it is a
    /// `timestamp` of wall times in that zone.
    wall_zone: Option<Tz>,
    /// `source.timezone`: every `timestamp` column's cells are read in it.
    zone: Tz,
    sql: Queries,
    page_queries: AtomicU64,
}

/// A bound of the timestamp column, as its type binds.
enum Bound {
    Instant(DateTime<Utc>),
    Wall(NaiveDateTime),
}

impl Bound {
    fn sql(&self) -> &(dyn ToSql + Sync) {
        match self {
            Bound::Instant(t) => t,
            Bound::Wall(t) => t,
        }
    }
}

/// The key as its column binds (`$3::int8` or `$3::text`).
fn key_sql(key: &Key) -> Box<dyn ToSql + Sync + Send> {
    match key {
        Key::Int(i) => Box::new(*i),
        Key::Text(t) => Box::new(t.clone()),
    }
}

impl PostgresSource {
    /// Connects with the connection string `source.url_env` names (through
    /// the tenant's `secrets`) and checks the table: it exists, the
    /// timestamp column is a `timestamptz` or `timestamp` NOT NULL, the key
    /// an integer or text NOT NULL, and the user may select from it.
    /// `prefix` is the config key of this source.
    pub async fn open(
        config: &PostgresSourceConfig,
        prefix: &str,
        secrets: &crate::secrets::Secrets,
    ) -> Result<Self, SourceError> {
        let bad = |key: &str, message: String| SourceError::Config {
            key: format!("{prefix}.{key}"),
            message,
        };
        let url = secrets
            .env(&config.url_env, &format!("{prefix}.url_env"))
            .map_err(|e| SourceError::Config {
                key: e.key,
                message: e.message,
            })?;
        let mut target = crate::postgres::parse(&url).map_err(|e| {
            bad(
                "url_env",
                format!(
                    "{} does not hold a usable PostgreSQL connection string: {e}",
                    config.url_env.name()
                ),
            )
        })?;
        crate::postgres::set_option(
            &mut target.config,
            "statement_timeout",
            config.query_timeout_ms,
        );
        // A page is read in one statement: its own snapshot, so rows
        // committing meanwhile are in the next page or not at all.
        crate::postgres::set_option(&mut target.config, "default_transaction_read_only", "on");
        let pool = crate::postgres::pool(target, POOL_SIZE, CONNECT_TIMEOUT)
            .map_err(|e| bad("url_env", e))?;
        let client = pool.get().await.map_err(|e| {
            let text = crate::postgres::describe(&e);
            // A refused password or an unknown database will not pass.
            if crate::postgres::find_db_error(&e).is_some() {
                bad("url_env", format!("cannot connect: {text}"))
            } else {
                SourceError::Transient(format!("cannot connect to PostgreSQL: {text}"))
            }
        })?;
        let table = schema::describe(&client, config, &bad).await?;
        drop(client);
        let zone: Tz = *config.timezone.value().map_err(|_| {
            bad(
                "timezone",
                format!("{:?} is not an IANA time zone", config.timezone.text()),
            )
        })?;
        let source = Self {
            pool,
            prefix: prefix.to_owned(),
            columns: table
                .columns
                .iter()
                .map(|c| c.name.to_lowercase())
                .collect(),
            kinds: table.columns.iter().map(|c| c.kind).collect(),
            ts_index: table.ts_index,
            key_index: table.key_index,
            wall_zone: (table.columns[table.ts_index].kind == Kind::Wall).then_some(zone),
            zone,
            sql: Queries::new(&table),
            page_queries: AtomicU64::new(0),
        };
        // Proves the user may SELECT from the table, and that every
        // statement prepares, before the first poll.
        source
            .read_page(&Cursor::before(Timestamp::EPOCH), Timestamp::EPOCH, 0)
            .await?;
        source.page_queries.store(0, Ordering::Relaxed);
        schema::warn_without_index(&source.pool, &table).await;
        Ok(source)
    }

    /// `ts` as the timestamp column binds; `round_up` for the initial
    /// cursor, so a bound between two microseconds never includes an
    /// earlier row (the column holds microseconds, a cursor nanoseconds).
    fn bound(&self, ts: Timestamp, round_up: bool) -> Bound {
        let micros = if round_up {
            Timestamp(
                ts.0.div_euclid(1_000)
                    .saturating_add(i64::from(ts.0.rem_euclid(1_000) != 0))
                    .saturating_mul(1_000),
            )
        } else {
            Timestamp(ts.0.div_euclid(1_000).saturating_mul(1_000))
        };
        match self.wall_zone {
            Some(zone) => Bound::Wall(instant_to_wall(micros, zone)),
            None => Bound::Instant(DateTime::from_timestamp_nanos(micros.0)),
        }
    }

    /// Runs one of the range statements (`page`: with a LIMIT) over the
    /// rows after `after` and at or below `upper`.
    async fn range(
        &self,
        page: bool,
        after: &Cursor,
        upper: Timestamp,
        limit: usize,
    ) -> Result<Vec<tokio_postgres::Row>, SourceError> {
        let client = self.pool.get().await.map_err(|e| self.error(&e))?;
        let upper = self.bound(upper, false);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        // A cursor between two microseconds (kept from a source with finer
        // timestamps) has no row at its instant: every row at or after the
        // next microsecond is after it.
        let key = after
            .key
            .as_ref()
            .filter(|_| after.ts.0.rem_euclid(1_000) == 0);
        let rows = match key {
            Some(key) => {
                let sql = if page {
                    &self.sql.page_after_key
                } else {
                    &self.sql.count_after_key
                };
                let statement = client
                    .prepare_cached(sql)
                    .await
                    .map_err(|e| self.error(&e))?;
                let from = self.bound(after.ts, false);
                let key = key_sql(key);
                let mut params: Vec<&(dyn ToSql + Sync)> =
                    vec![upper.sql(), from.sql(), key.as_ref() as &(dyn ToSql + Sync)];
                if page {
                    params.push(&limit);
                }
                client.query(&statement, &params).await
            }
            None => {
                let sql = if page {
                    &self.sql.page_at_ts
                } else {
                    &self.sql.count_at_ts
                };
                let statement = client
                    .prepare_cached(sql)
                    .await
                    .map_err(|e| self.error(&e))?;
                let from = self.bound(after.ts, true);
                let mut params: Vec<&(dyn ToSql + Sync)> = vec![upper.sql(), from.sql()];
                if page {
                    params.push(&limit);
                }
                client.query(&statement, &params).await
            }
        };
        rows.map_err(|e| self.error(&e))
    }

    async fn read_page(
        &self,
        after: &Cursor,
        upper: Timestamp,
        limit: usize,
    ) -> Result<Page, SourceError> {
        let rows = self.range(true, after, upper, limit).await?;
        self.page_queries.fetch_add(1, Ordering::Relaxed);
        let full = rows.len() >= limit;
        let rows = rows
            .iter()
            .map(|row| self.source_row(row))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Page { rows, full })
    }

    fn source_row(&self, row: &tokio_postgres::Row) -> Result<SourceRow, SourceError> {
        let cells = (0..self.kinds.len())
            .map(|i| self.cell(row, i))
            .collect::<Result<Vec<_>, _>>()?;
        let ts = match &cells[self.ts_index] {
            Value::Timestamp(t) => Timestamp::from_instant(*t),
            // Only a view can hand out a NULL timestamp.
            other => {
                return Err(SourceError::Config {
                    key: format!("{}.timestamp.column", self.prefix),
                    message: format!(
                        "a row holds {other:?} as its timestamp: it must never be NULL"
                    ),
                })
            }
        };
        let key = match &cells[self.key_index] {
            Value::Integer(i) => Key::Int(*i),
            Value::Text(t) => Key::Text(t.clone()),
            // Only a view can hand out a NULL key (a table's was checked
            // NOT NULL): no retry will read past it.
            other => {
                return Err(SourceError::Config {
                    key: format!("{}.key_column", self.prefix),
                    message: format!(
                        "a row at {} holds {other:?} as its key: the key must never be NULL",
                        ts
                    ),
                })
            }
        };
        Ok(SourceRow {
            row: Row {
                identity: identity(&key, ts),
                cells,
            },
            cursor: Cursor::after(ts, key),
        })
    }

    /// Column `i` of `row` as a contract value.
    fn cell(&self, row: &tokio_postgres::Row, i: usize) -> Result<Value, SourceError> {
        fn get<'a, T: tokio_postgres::types::FromSql<'a>>(
            row: &'a tokio_postgres::Row,
            i: usize,
        ) -> Result<Option<T>, tokio_postgres::Error> {
            row.try_get::<_, Option<T>>(i)
        }
        let value = match self.kinds[i] {
            Kind::Int => get::<i64>(row, i).map(|v| v.map(Value::Integer)),
            Kind::Float => get::<f64>(row, i).map(|v| v.map(Value::Float)),
            Kind::Bool => get::<bool>(row, i).map(|v| v.map(Value::Boolean)),
            Kind::Decimal => get::<String>(row, i).map(|v| v.map(Value::Decimal)),
            Kind::Json => get::<String>(row, i).map(|v| v.map(Value::Json)),
            Kind::Text => get::<String>(row, i).map(|v| v.map(Value::Text)),
            Kind::Bytes => get::<Vec<u8>>(row, i).map(|v| v.map(Value::Binary)),
            Kind::Date => get::<NaiveDate>(row, i).map(|v| {
                v.map(|d| {
                    let days = d.signed_duration_since(NaiveDate::default()).num_days();
                    Value::Date(i32::try_from(days).unwrap_or(if days < 0 {
                        i32::MIN
                    } else {
                        i32::MAX
                    }))
                })
            }),
            Kind::Instant => get::<DateTime<Utc>>(row, i)
                .map(|v| v.map(|t| Value::Timestamp(Timestamp::from_chrono(t).instant()))),
            Kind::Wall => {
                let zone = self.zone;
                get::<NaiveDateTime>(row, i)
                    .map(|v| v.map(|t| Value::Timestamp(wall_to_instant(t, zone).instant())))
            }
        };
        // `infinity` in a date or timestamp column is the one value a
        // column of those types can hold that no instant stands for.
        value.map(|v| v.unwrap_or(Value::Null)).map_err(|e| SourceError::Config {
            key: format!("{}.table", self.prefix),
            message: format!(
                "column `{}` holds a value freshet cannot read ({}); rows stop here until it is changed",
                self.columns[i],
                crate::postgres::describe(&e)
            ),
        })
    }

    /// A failure as "fix the config" (the server refused who we are or
    /// what we asked for) or "try again" (anything else: a lost
    /// connection, a restart, a timeout).
    fn error(&self, e: &(dyn std::error::Error + 'static)) -> SourceError {
        let text = crate::postgres::describe(e);
        match crate::postgres::find_db_error(e).map(|db| db.code().code().to_owned()) {
            // 28: authorisation, 3D: no such database, 42: no such table or
            // column, or no privilege.
            Some(code)
                if ["28", "3D", "42"]
                    .iter()
                    .any(|class| code.starts_with(class)) =>
            {
                SourceError::Config {
                    key: format!("{}.table", self.prefix),
                    message: text,
                }
            }
            _ => SourceError::Transient(text),
        }
    }
}

#[async_trait::async_trait]
impl Source for PostgresSource {
    fn columns(&self) -> &[String] {
        &self.columns
    }

    async fn now(&self) -> Result<Timestamp, SourceError> {
        let client = self.pool.get().await.map_err(|e| self.error(&e))?;
        let row = client
            .query_one("SELECT clock_timestamp()", &[])
            .await
            .map_err(|e| self.error(&e))?;
        let now: DateTime<Utc> = row.try_get(0).map_err(|e| self.error(&e))?;
        Ok(Timestamp::from_chrono(now))
    }

    async fn page(
        &self,
        after: &Cursor,
        upper: Timestamp,
        limit: usize,
    ) -> Result<Page, SourceError> {
        self.read_page(after, upper, limit).await
    }

    async fn remaining(
        &self,
        after: &Cursor,
        upper: Timestamp,
    ) -> Result<Option<u64>, SourceError> {
        let rows = self.range(false, after, upper, 0).await?;
        let count: Option<i64> = rows.first().and_then(|r| r.try_get(0).ok());
        Ok(count.and_then(|n| u64::try_from(n).ok()))
    }

    fn query_counts(&self) -> QueryCounts {
        QueryCounts {
            probes: 0,
            page_queries: self.page_queries.load(Ordering::Relaxed),
        }
    }
}
