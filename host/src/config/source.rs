//! `[pipelines.NAME.source]`: where a pipeline's rows come from, and the
//! timestamp polling every source kind shares.

use super::{tagged, Parsed};
use crate::secrets::{SecretEnv, SecretFile};
use crate::source::Timestamp;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// `[pipelines.NAME.source]`.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum SourceConfig {
    /// A table in an SQLite database file.
    Sqlite(SqliteSourceConfig),
    /// A Snowflake table.
    Snowflake(Box<SnowflakeSourceConfig>),
    /// A PostgreSQL table.
    Postgres(PostgresSourceConfig),
}

/// What every source polled by timestamp has, whatever its kind.
#[derive(Debug, Clone, Copy)]
pub struct Polling<'a> {
    /// The table.
    pub table: &'a str,
    /// The column that, with the timestamp, orders rows and breaks ties.
    pub key_column: &'a str,
    /// The timestamp column and where reading starts.
    pub timestamp: &'a TimestampConfig,
    /// Rows per page query.
    pub page_size: usize,
    /// Wait after a poll that found nothing new, in milliseconds.
    pub poll_interval_ms: u64,
    /// The delay window, in milliseconds.
    pub delay_ms: u64,
    /// Read the whole table on first start.
    pub backfill: bool,
}

impl SourceConfig {
    /// The polling settings every kind shares.
    pub fn polling(&self) -> Polling<'_> {
        match self {
            SourceConfig::Sqlite(s) => Polling {
                table: &s.table,
                key_column: &s.key_column,
                timestamp: &s.timestamp,
                page_size: s.page_size,
                poll_interval_ms: s.poll_interval_ms,
                delay_ms: s.delay_ms,
                backfill: s.backfill,
            },
            SourceConfig::Snowflake(s) => Polling {
                table: &s.table,
                key_column: &s.key_column,
                timestamp: &s.timestamp,
                page_size: s.page_size,
                poll_interval_ms: s.poll_interval_ms,
                delay_ms: s.delay_ms,
                backfill: s.backfill,
            },
            SourceConfig::Postgres(s) => Polling {
                table: &s.table,
                key_column: &s.key_column,
                timestamp: &s.timestamp,
                page_size: s.page_size,
                poll_interval_ms: s.poll_interval_ms,
                delay_ms: s.delay_ms,
                backfill: s.backfill,
            },
        }
    }
}

/// An SQLite table polled by timestamp.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SqliteSourceConfig {
    /// The database file.
    pub path: PathBuf,
    /// The table.
    pub table: String,
    /// The column that, with the timestamp, orders rows and breaks ties.
    pub key_column: String,
    /// The timestamp column and where reading starts.
    pub timestamp: TimestampConfig,
    /// Rows per page query.
    #[serde(default = "default_page_size")]
    pub page_size: usize,
    /// Wait after a poll that found nothing new, in milliseconds.
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
    /// Rows newer than `now - delay_ms` are left for a later poll, so a
    /// transaction that commits late with an earlier timestamp is still read.
    #[serde(default)]
    pub delay_ms: u64,
    /// `true`: read the whole table (`timestamp.initial = 0`); `false`: only
    /// rows newer than the first start (`timestamp.initial = -1`). Ignored
    /// when `timestamp.initial` is set.
    #[serde(default)]
    pub backfill: bool,
}

fn default_page_size() -> usize {
    1000
}

fn default_poll_interval_ms() -> u64 {
    1000
}

/// A Snowflake table polled by timestamp, through `snowflake-connector-rs`.
/// Identifiers are plain (unquoted) Snowflake identifiers, so they match
/// case-insensitively as in any worksheet.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SnowflakeSourceConfig {
    /// The account identifier (`orgname-account` or a locator).
    pub account: String,
    /// The user.
    pub user: String,
    /// The role (else the user's default role).
    pub role: Option<String>,
    /// The warehouse page queries run on.
    pub warehouse: String,
    /// The database.
    pub database: String,
    /// The schema.
    pub schema: String,
    /// The table.
    pub table: String,
    /// The column that, with the timestamp, orders rows and breaks ties.
    pub key_column: String,
    /// The timestamp column (`TIMESTAMP_NTZ` or `TIMESTAMP_LTZ`, NOT NULL)
    /// and where reading starts.
    pub timestamp: TimestampConfig,
    /// The IANA zone a `TIMESTAMP_NTZ` column's wall-clock times are in.
    #[serde(default = "default_timezone")]
    pub timezone: Parsed<chrono_tz::Tz>,
    /// How the user signs in; secrets come from the environment or files.
    pub auth: SnowflakeAuthConfig,
    /// Rows per page query.
    #[serde(default = "default_snowflake_page_size")]
    pub page_size: usize,
    /// Wait after a poll that found nothing new, in milliseconds (the
    /// vendor's connector: 10 s).
    #[serde(default = "default_snowflake_poll_interval_ms")]
    pub poll_interval_ms: u64,
    /// Rows newer than Snowflake's `CURRENT_TIMESTAMP - delay_ms` wait for a
    /// later poll (late commits with earlier timestamps are still read).
    #[serde(default)]
    pub delay_ms: u64,
    /// `true`: read the whole table on first start; `false`: only new rows.
    #[serde(default)]
    pub backfill: bool,
    /// An idle table is only asked "anything new?" (no warehouse); the page
    /// query runs anyway once this long has passed without one, in
    /// milliseconds.
    #[serde(default = "default_max_staleness_ms")]
    pub max_staleness_ms: u64,
    /// Per-query time limit, in milliseconds.
    #[serde(default = "default_query_timeout_ms")]
    pub query_timeout_ms: u64,
    /// Another base URL than `https://{account}.snowflakecomputing.com`
    /// (PrivateLink, or a local emulator in tests).
    pub endpoint: Option<Parsed<reqwest::Url>>,
}

fn default_timezone() -> Parsed<chrono_tz::Tz> {
    Parsed::from("UTC")
}
fn default_snowflake_page_size() -> usize {
    10_000
}
fn default_snowflake_poll_interval_ms() -> u64 {
    10_000
}
fn default_max_staleness_ms() -> u64 {
    3_600_000
}
fn default_query_timeout_ms() -> u64 {
    120_000
}

/// A PostgreSQL table polled by timestamp, through tokio-postgres.
/// Identifiers are matched as PostgreSQL matches unquoted ones (folded to
/// lower case) unless a name with capitals exists as written.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSourceConfig {
    /// Environment variable holding the connection string (a libpq URL or
    /// `key=value` string; TLS as its `sslmode` says).
    pub url_env: SecretEnv,
    /// The schema.
    #[serde(default = "default_postgres_schema")]
    pub schema: String,
    /// The table (or view).
    pub table: String,
    /// The column that, with the timestamp, orders rows and breaks ties: an
    /// integer or text, NOT NULL.
    pub key_column: String,
    /// The timestamp column (`timestamptz` or `timestamp`, NOT NULL) and
    /// where reading starts.
    pub timestamp: TimestampConfig,
    /// The IANA zone a `timestamp` (without time zone) column's wall-clock
    /// times are in.
    #[serde(default = "default_timezone")]
    pub timezone: Parsed<chrono_tz::Tz>,
    /// Rows per page query.
    #[serde(default = "default_page_size")]
    pub page_size: usize,
    /// Wait after a poll that found nothing new, in milliseconds.
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
    /// Rows newer than the server's `clock_timestamp() - delay_ms` wait for
    /// a later poll (late commits with earlier timestamps are still read).
    #[serde(default)]
    pub delay_ms: u64,
    /// `true`: read the whole table on first start; `false`: only new rows.
    #[serde(default)]
    pub backfill: bool,
    /// Per-query time limit (`statement_timeout`), in milliseconds.
    #[serde(default = "default_postgres_query_timeout_ms")]
    pub query_timeout_ms: u64,
}

fn default_postgres_schema() -> String {
    "public".into()
}
fn default_postgres_query_timeout_ms() -> u64 {
    30_000
}

/// `[pipelines.NAME.source.auth]`: a password, or a key pair (PKCS#8 PEM,
/// optionally encrypted). Never the secret itself.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SnowflakeAuthConfig {
    /// Environment variable holding the password.
    pub password_env: Option<SecretEnv>,
    /// A PKCS#8 PEM file holding the private key (inside the tenant's
    /// `secret_dir`, when tenants are declared).
    pub private_key_file: Option<SecretFile>,
    /// Environment variable holding the PKCS#8 PEM private key.
    pub private_key_env: Option<SecretEnv>,
    /// Environment variable holding the private key's passphrase.
    pub passphrase_env: Option<SecretEnv>,
}

/// `[pipelines.NAME.source.timestamp]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TimestampConfig {
    /// The column: NOT NULL, set on insert and on every update.
    pub column: String,
    /// How an INTEGER column stores instants: `s`, `ms` (the default) or
    /// `us` since the epoch. Only for the sqlite source.
    pub unit: Option<TimestampUnit>,
    /// The first cursor: `0` (everything), `-1` (from first start), epoch
    /// seconds, or an RFC 3339 instant. Rows *at* this instant are read.
    pub initial: Option<InitialTimestamp>,
}

/// Units of an integer timestamp column.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TimestampUnit {
    /// Seconds since the epoch.
    S,
    /// Milliseconds since the epoch.
    #[default]
    Ms,
    /// Microseconds since the epoch.
    Us,
}

/// `timestamp.initial` as written: a number or a string.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum InitialTimestamp {
    /// Epoch seconds; `-1` means "now, at first start".
    EpochSeconds(i64),
    /// An RFC 3339 instant.
    Rfc3339(Parsed<Timestamp>),
}

impl<'de> Deserialize<'de> for SourceConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (kind, rest) = tagged::split(d)?;
        match kind.as_str() {
            "sqlite" => tagged::variant(rest).map(Self::Sqlite),
            "snowflake" => tagged::variant(rest).map(|s| Self::Snowflake(Box::new(s))),
            "postgres" => tagged::variant(rest).map(Self::Postgres),
            other => Err(tagged::unknown(other, &["sqlite", "snowflake", "postgres"])),
        }
    }
}
