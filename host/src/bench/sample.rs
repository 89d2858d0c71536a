//! The example `orders` table: what the quickstart, the benchmark and the
//! tests read. Deterministic, so a run can be compared with another.

use anyhow::Context as _;
use rusqlite::{params, Connection};
use std::path::Path;

use crate::source::Timestamp;

/// The table, as a customer would have it: epoch-millisecond `updated_at`,
/// NOT NULL, indexed with the key for the pipeline's `(ts, key)` pages.
pub const ORDERS_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS orders (
    id             INTEGER PRIMARY KEY,
    customer_email TEXT NOT NULL,
    status         TEXT NOT NULL,
    amount         TEXT NOT NULL,   -- exact decimal text, e.g. '12.50'
    currency       TEXT NOT NULL,
    updated_at     INTEGER NOT NULL -- epoch milliseconds
);
CREATE INDEX IF NOT EXISTS orders_updated_at ON orders (updated_at, id);
";

/// The status of the n-th sample order: 60 % confirmed, 25 % pending,
/// 15 % cancelled.
pub fn status_of(n: u64) -> &'static str {
    match n % 20 {
        0..=11 => "confirmed",
        12..=16 => "pending",
        _ => "cancelled",
    }
}

/// Creates the table if needed and adds `rows` orders whose `updated_at`
/// spreads evenly over `[from, to]` (several rows share each millisecond when
/// there are more rows than milliseconds). Returns the first id added.
pub fn create_orders(
    db: &Path,
    rows: usize,
    from: Timestamp,
    to: Timestamp,
) -> anyhow::Result<i64> {
    if let Some(dir) = db.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut conn = Connection::open(db).with_context(|| format!("opening {}", db.display()))?;
    conn.execute_batch(ORDERS_SCHEMA)?;
    let first: i64 = conn.query_row("SELECT COALESCE(MAX(id), 0) + 1 FROM orders", [], |r| {
        r.get(0)
    })?;
    let (from_ms, to_ms) = (from.0 / 1_000_000, to.0 / 1_000_000);
    let span = (to_ms - from_ms).max(0);
    let tx = conn.transaction()?;
    {
        let mut insert = tx.prepare(
            "INSERT INTO orders (id, customer_email, status, amount, currency, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        for i in 0..rows as i64 {
            let id = first + i;
            let n = id as u64;
            let cents = (n * 137) % 50_000 + 100;
            let at = from_ms
                + if rows > 1 {
                    span * i / (rows as i64 - 1)
                } else {
                    0
                };
            insert.execute(params![
                id,
                format!("customer{}@example.com", n % 5_000),
                status_of(n),
                format!("{}.{:02}", cents / 100, cents % 100),
                ["EUR", "USD", "GBP"][(n % 3) as usize],
                at,
            ])?;
        }
    }
    tx.commit()?;
    Ok(first)
}

/// The same table in Snowflake: `UPDATED_AT` a `TIMESTAMP_NTZ` wall time
/// (UTC unless the pipeline's `timezone` says otherwise).
pub const SNOWFLAKE_ORDERS_TABLE: &str = "CREATE TABLE ORDERS (
    ID NUMBER(38,0) NOT NULL,
    CUSTOMER_EMAIL VARCHAR NOT NULL,
    STATUS VARCHAR NOT NULL,
    AMOUNT NUMBER(12,2) NOT NULL,
    CURRENCY VARCHAR NOT NULL,
    UPDATED_AT TIMESTAMP_NTZ NOT NULL)";

/// One statement adding the orders [`create_orders`] adds to an empty table
/// (ids from 1, the same statuses, amounts, currencies and instants), made
/// by Snowflake's `GENERATOR` rather than sent row by row.
pub fn snowflake_orders_insert(rows: usize, from: Timestamp, to: Timestamp) -> String {
    let (from_ms, to_ms) = (from.0 / 1_000_000, to.0 / 1_000_000);
    let span = (to_ms - from_ms).max(0);
    let step = if rows > 1 {
        format!("FLOOR({span} * n / {})", rows - 1)
    } else {
        "0".to_owned()
    };
    let start = chrono::DateTime::from_timestamp_millis(from_ms)
        .unwrap_or_default()
        .naive_utc()
        .format("%Y-%m-%d %H:%M:%S%.3f");
    format!(
        "INSERT INTO ORDERS SELECT n + 1, 'customer' || MOD(n + 1, 5000) || '@example.com', \
         CASE WHEN MOD(n + 1, 20) < 12 THEN 'confirmed' WHEN MOD(n + 1, 20) < 17 THEN 'pending' ELSE 'cancelled' END, \
         (MOD((n + 1) * 137, 50000) + 100) / 100, \
         CASE MOD(n + 1, 3) WHEN 0 THEN 'EUR' WHEN 1 THEN 'USD' ELSE 'GBP' END, \
         DATEADD(millisecond, {step}, '{start}'::TIMESTAMP_NTZ) \
         FROM (SELECT SEQ4() AS n FROM TABLE(GENERATOR(ROWCOUNT => {rows})))"
    )
}
