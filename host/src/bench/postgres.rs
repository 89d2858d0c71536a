//! `freshet bench postgres`: rows/s from a PostgreSQL table through the
//! plugin to the AEP receiver (a process of its own), beside the same rows
//! from SQLite; both with the SQLite state store, so the figure is the
//! source's. The table lives in a schema of its own in the database
//! `--url-env` names, dropped afterwards.

use super::{emit, end_to_end, sample, EndToEnd, OrdersSource, PostgresOrders};
use crate::source::Timestamp;
use anyhow::Context as _;
use serde_json::json;
use std::path::PathBuf;
use std::time::Duration;

/// Arguments of `freshet bench postgres`.
#[derive(Debug, clap::Args)]
pub struct PostgresArgs {
    /// The example orders plugin component.
    #[arg(long)]
    plugin: PathBuf,
    /// The variable holding the connection string of a database the bench
    /// may create a schema in.
    #[arg(long)]
    url_env: String,
    /// Rows in each run.
    #[arg(long, default_value_t = 100_000)]
    rows: usize,
    /// Rows per page query.
    #[arg(long, default_value_t = 5_000)]
    page: usize,
    /// Rows per plugin call.
    #[arg(long, default_value_t = 500)]
    batch: usize,
}

/// The bench's table: the sample's columns with PostgreSQL's own types.
const TABLE: &str = "
CREATE TABLE orders (
    id             bigint PRIMARY KEY,
    customer_email text NOT NULL,
    status         text NOT NULL,
    amount         numeric(12, 2) NOT NULL,
    currency       text NOT NULL,
    updated_at     timestamptz NOT NULL
);
CREATE INDEX orders_cursor ON orders (updated_at, id);
";

/// Seeds both sources with the same orders and runs each end to end.
pub async fn run(args: PostgresArgs) -> anyhow::Result<()> {
    let url = std::env::var(&args.url_env)
        .with_context(|| format!("--url-env: {} is not set", args.url_env))?;
    let dir = tempfile::tempdir()?;
    let now = Timestamp::now();
    let db = dir.path().join("orders.db");
    sample::create_orders(
        &db,
        args.rows,
        now.minus(Duration::from_secs(86_400)),
        now.minus(Duration::from_secs(60)),
    )?;
    let schema = format!("bench_{}", now.0 / 1_000_000);
    let target = crate::postgres::parse(&url).map_err(anyhow::Error::msg)?;
    let pool =
        crate::postgres::pool(target, 1, Duration::from_secs(10)).map_err(anyhow::Error::msg)?;
    let client = pool.get().await.context("connecting to the database")?;
    client
        .batch_execute(&format!(
            "CREATE SCHEMA {schema}; SET search_path = {schema}; {TABLE}"
        ))
        .await?;
    copy_orders(&client, &db, &schema).await?;

    let run = EndToEnd {
        plugin: &args.plugin,
        cache: &dir.path().join("cache"),
        rows: args.rows,
        page: args.page,
        batch: args.batch,
        actions: true,
        metrics: false,
    };
    let receiver = super::peers::RemoteReceiver::start(false)?;
    let postgres = OrdersSource::Postgres(PostgresOrders {
        url_env: args.url_env.clone(),
        schema: schema.clone(),
        timezone: "UTC".into(),
    });
    let mut figures = Vec::new();
    for (name, source) in [("postgres", postgres), ("sqlite", OrdersSource::Sqlite(db))] {
        figures.push(end_to_end(&dir.path().join(name), source, &run, &receiver).await?);
    }
    client
        .batch_execute(&format!(
            "SET client_min_messages = warning; DROP SCHEMA {schema} CASCADE"
        ))
        .await?;
    emit(json!({
        "bench": "postgres_source", "rows": args.rows,
        "postgres_rows_per_s": figures[0], "sqlite_rows_per_s": figures[1],
        "ratio": (figures[0] / figures[1] * 100.0).round() / 100.0,
    }));
    Ok(())
}

/// Copies the sample's rows from the SQLite file into `schema.orders`,
/// a thousand rows a statement.
async fn copy_orders(
    client: &deadpool_postgres::Object,
    db: &std::path::Path,
    schema: &str,
) -> anyhow::Result<()> {
    type Rows = (
        Vec<i64>,
        Vec<String>,
        Vec<String>,
        Vec<String>,
        Vec<String>,
        Vec<i64>,
    );
    let rows: Rows = {
        let conn = rusqlite::Connection::open(db)?;
        let mut stmt = conn.prepare(
            "SELECT id, customer_email, status, amount, currency, updated_at FROM orders ORDER BY id",
        )?;
        let mut out: Rows = Default::default();
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            out.0.push(r.get(0)?);
            out.1.push(r.get(1)?);
            out.2.push(r.get(2)?);
            out.3.push(r.get(3)?);
            out.4.push(r.get(4)?);
            out.5.push(r.get(5)?);
        }
        out
    };
    let insert = client
        .prepare(&format!(
            "INSERT INTO {schema}.orders
             SELECT id, e, s, a::numeric, c, timestamptz 'epoch' + ms * interval '1 millisecond'
             FROM unnest($1::int8[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int8[])
                  AS t(id, e, s, a, c, ms)"
        ))
        .await?;
    for start in (0..rows.0.len()).step_by(1000) {
        let end = (start + 1000).min(rows.0.len());
        client
            .execute(
                &insert,
                &[
                    &&rows.0[start..end],
                    &&rows.1[start..end],
                    &&rows.2[start..end],
                    &&rows.3[start..end],
                    &&rows.4[start..end],
                    &&rows.5[start..end],
                ],
            )
            .await?;
    }
    Ok(())
}
