//! Where rows come from: the [`Source`] trait, the `(timestamp, key)` cursor
//! every source pages by, and the sources themselves.
//!
//! A page is the rows after the cursor and at or below an upper bound:
//! `WHERE ts <= :upper AND (ts > :ts OR (ts = :ts AND key > :key)) ORDER BY ts, key LIMIT :n`,
//! with `:upper = source_now - delay`. Because the key breaks ties, a page
//! that ends in the middle of a run of equal timestamps loses and repeats
//! nothing; because of the delay, a transaction that commits a little late
//! with an earlier timestamp is still read.

pub mod postgres;
pub mod snowflake;
pub mod sqlite;
pub mod wall;

use crate::plugin::contract::{Instant, Row};
use serde::{Deserialize, Serialize};
use std::fmt;

/// An instant as nanoseconds since the epoch (UTC): covers 1677–2262, which
/// holds every row timestamp a warehouse table carries, with a total order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// The epoch.
    pub const EPOCH: Timestamp = Timestamp(0);

    /// Now, on this host's clock.
    pub fn now() -> Self {
        Self::from_chrono(chrono::Utc::now())
    }

    /// From a chrono instant (saturating outside the range).
    pub fn from_chrono(t: chrono::DateTime<chrono::Utc>) -> Self {
        Self(t.timestamp_nanos_opt().unwrap_or(if t.timestamp() < 0 {
            i64::MIN
        } else {
            i64::MAX
        }))
    }

    /// As the contract's instant.
    pub fn instant(self) -> Instant {
        Instant {
            seconds: self.0.div_euclid(1_000_000_000),
            nanos: self.0.rem_euclid(1_000_000_000) as u32,
        }
    }

    /// From the contract's instant (saturating).
    pub fn from_instant(i: Instant) -> Self {
        Self(
            i.seconds
                .saturating_mul(1_000_000_000)
                .saturating_add(i64::from(i.nanos)),
        )
    }

    /// RFC 3339 with as many fraction digits as needed, in UTC (`Z`).
    pub fn rfc3339(self) -> String {
        chrono::DateTime::from_timestamp_nanos(self.0)
            .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
    }

    /// Moves back by a duration, saturating.
    pub fn minus(self, d: std::time::Duration) -> Self {
        Self(
            self.0
                .saturating_sub(i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)),
        )
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.rfc3339())
    }
}

/// An RFC 3339 instant (any offset; nanoseconds kept).
impl std::str::FromStr for Timestamp {
    type Err = chrono::ParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let t = chrono::DateTime::parse_from_rfc3339(text)?;
        Ok(Self::from_chrono(t.to_utc()))
    }
}

/// A row's key value: the tie-breaker among equal timestamps.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Key {
    /// An integer key.
    Int(i64),
    /// A text key, compared as the source compares it (binary collation).
    Text(String),
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Int(i) => write!(f, "{i}"),
            Key::Text(s) => f.write_str(s),
        }
    }
}

/// Where reading stands: every row at or before it is done.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Cursor {
    /// The timestamp of the last row done.
    pub ts: Timestamp,
    /// The key of the last row done at `ts`; `None` means no row at `ts` is
    /// done yet (the next page starts *at* `ts`, inclusive).
    pub key: Option<Key>,
}

impl Cursor {
    /// A cursor before every row at or after `ts`.
    pub fn before(ts: Timestamp) -> Self {
        Self { ts, key: None }
    }

    /// The cursor just past one row.
    pub fn after(ts: Timestamp, key: Key) -> Self {
        Self { ts, key: Some(key) }
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            Some(key) => write!(f, "({}, {key})", self.ts),
            None => write!(f, "(before {})", self.ts),
        }
    }
}

/// One row read from a source, with its place in the order.
#[derive(Debug, Clone)]
pub struct SourceRow {
    /// The cursor just past this row.
    pub cursor: Cursor,
    /// The row as the plugin sees it.
    pub row: Row,
}

/// The row identity the contract promises: the same on every read of the
/// same row version. An update (new timestamp) is a new identity.
pub fn identity(key: &Key, ts: Timestamp) -> String {
    format!("{key}@{}", ts.0)
}

/// A page of rows.
#[derive(Debug, Default)]
pub struct Page {
    /// The rows, in `(ts, key)` order.
    pub rows: Vec<SourceRow>,
    /// Whether the page was cut at the page size (more rows may be waiting).
    pub full: bool,
}

/// Why a source failed.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The source is not as the config says (table, columns, credentials,
    /// grants); retrying cannot help, the pipeline stops. `key` is the
    /// config key the problem is about.
    #[error("{key}: {message}")]
    Config {
        /// The config key path.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A failure that may pass (locked database, lost connection); retried.
    #[error("source query failed: {0}")]
    Transient(String),
}

/// A table read by timestamp.
#[async_trait::async_trait]
pub trait Source: Send + Sync {
    /// Column names (lower-case) of the rows, in cell order.
    fn columns(&self) -> &[String];

    /// The source's own clock: the upper bound and `timestamp.initial = -1`
    /// are measured on it, never on another machine's.
    async fn now(&self) -> Result<Timestamp, SourceError>;

    /// The rows after `after`, at or below `upper`, at most `limit`.
    async fn page(
        &self,
        after: &Cursor,
        upper: Timestamp,
        limit: usize,
    ) -> Result<Page, SourceError>;

    /// How many rows are after `after` and at or below `upper` (for backfill
    /// progress), if the source can count them.
    async fn remaining(&self, after: &Cursor, upper: Timestamp)
        -> Result<Option<u64>, SourceError>;

    /// The queries sent so far, by cost.
    fn query_counts(&self) -> QueryCounts;
}

/// Queries a source sent, by what they cost on a warehouse.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueryCounts {
    /// "Anything new?" questions answered from metadata (no warehouse).
    pub probes: u64,
    /// Queries that read the table (on a warehouse, where there is one).
    pub page_queries: u64,
}

/// A row as a JSON object keyed by column, for dead letters and
/// `freshet plugin test`. Timestamps as RFC 3339, binaries as hex.
pub fn row_json(columns: &[String], row: &Row) -> String {
    use crate::plugin::contract::Value;
    use serde_json::{json, Map};
    let mut cells = Map::new();
    for (name, value) in columns.iter().zip(&row.cells) {
        let v = match value {
            Value::Null => serde_json::Value::Null,
            Value::Boolean(b) => json!(b),
            Value::Integer(i) => json!(i),
            Value::Decimal(d) => json!(d),
            Value::Float(f) => json!(f),
            Value::Text(t) => json!(t),
            Value::Timestamp(t) => json!(Timestamp::from_instant(*t).rfc3339()),
            Value::Date(d) => json!(chrono::DateTime::from_timestamp(i64::from(*d) * 86_400, 0)
                .map(|t| t.date_naive().to_string())
                .unwrap_or_default()),
            Value::Json(j) => serde_json::from_str(j).unwrap_or_else(|_| json!(j)),
            Value::Binary(b) => json!(hex::encode(b)),
        };
        cells.insert(name.clone(), v);
    }
    json!({"identity": row.identity, "cells": cells}).to_string()
}

#[cfg(test)]
mod tests {
    use super::Timestamp;

    #[test]
    fn an_rfc3339_instant_parses_to_utc_nanoseconds_whatever_its_offset() {
        let utc: Timestamp = "2023-11-14T22:13:20.000000001Z".parse().unwrap();
        assert_eq!(utc, Timestamp(1_700_000_000_000_000_001));
        let paris: Timestamp = "2023-11-14T23:13:20.000000001+01:00".parse().unwrap();
        assert_eq!(paris, utc);
        assert_eq!(utc.to_string(), "2023-11-14T22:13:20.000000001Z");
    }

    #[test]
    fn text_that_is_not_an_instant_is_refused() {
        for text in [
            "yesterday",
            "2023-11-14",
            "2023-11-14T22:13:20",
            "1700000000",
        ] {
            assert!(text.parse::<Timestamp>().is_err(), "{text}");
        }
    }
}
