//! `freshet bench snowflake`: rows/s from Snowflake through the plugin to
//! the loopback AEP receiver, beside the same rows from SQLite. Snowflake is
//! the local emulator (fakesnow behind the project's adapter), so the figure
//! is this host's and the protocol's cost, not a warehouse's.

use super::peers::PeerProcess;
use super::seed::Sql;
use super::{
    emit, end_to_end, per_s, sample, EndToEnd, OrdersPipeline, OrdersSource, SnowflakeOrders,
};
use crate::source::{Cursor, Timestamp};
use anyhow::ensure;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Arguments of `freshet bench snowflake`.
#[derive(Debug, clap::Args)]
pub struct SnowflakeArgs {
    /// The example orders plugin component.
    #[arg(long)]
    plugin: PathBuf,
    /// Rows in each run.
    #[arg(long, default_value_t = 100_000)]
    rows: usize,
    /// Rows per page query.
    #[arg(long, default_value_t = 10_000)]
    page: usize,
    /// Rows per plugin call.
    #[arg(long, default_value_t = 500)]
    batch: usize,
    /// Rows per result chunk the emulator serves (Snowflake's are a few MB).
    #[arg(long, default_value_t = 10_000)]
    chunk_rows: usize,
}

/// Seeds both sources with the same orders and runs each end to end.
pub async fn run(args: SnowflakeArgs) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let now = Timestamp::now();
    let (from, to) = (
        now.minus(Duration::from_secs(86_400)),
        now.minus(Duration::from_secs(60)),
    );
    let emulator = PeerProcess::spawn(&[
        "snowflake".as_ref(),
        "--db-dir".as_ref(),
        dir.path().join("emulator").as_os_str(),
        "--chunk-rows".as_ref(),
        args.chunk_rows.to_string().as_ref(),
    ])?;
    let sql = Sql::connect(&emulator.url(), "BENCH").await?;
    sql.exec(sample::SNOWFLAKE_ORDERS_TABLE).await?;
    sql.exec(&sample::snowflake_orders_insert(args.rows, from, to))
        .await?;
    let db = dir.path().join("orders.db");
    sample::create_orders(&db, args.rows, from, to)?;

    std::env::set_var("FRESHET_SNOWFLAKE_PASSWORD", "bench");
    let orders = SnowflakeOrders::new(&emulator.url(), "BENCH");
    read_only(&dir.path().join("read-only"), &orders, &args).await?;
    let snowflake = OrdersSource::Snowflake(orders);
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
    for (name, source) in [
        ("snowflake", snowflake),
        ("sqlite", OrdersSource::Sqlite(db)),
    ] {
        end_to_end(&dir.path().join(name), source, &run, &receiver).await?;
    }
    Ok(())
}

/// The source alone: every page read, nothing mapped or delivered. What
/// the emulator and the client cost, apart from the rest of the pipeline.
async fn read_only(
    dir: &Path,
    orders: &SnowflakeOrders,
    args: &SnowflakeArgs,
) -> anyhow::Result<()> {
    let mut pipeline = OrdersPipeline::new(
        dir,
        args.plugin.clone(),
        OrdersSource::Snowflake(orders.clone()),
        String::new(),
    );
    pipeline.page_size = args.page;
    let config = crate::config::parse(&pipeline.render())?;
    let source_config = &config.pipelines["orders"].source;
    let secrets = crate::secrets::Secrets::unrestricted();
    let source = crate::pipeline::open_source(source_config, "pipelines.orders", &secrets).await?;
    let start = Instant::now();
    let upper = source.now().await?;
    let mut cursor = Cursor::before(Timestamp::EPOCH);
    let mut rows = 0;
    loop {
        let page = source.page(&cursor, upper, args.page).await?;
        rows += page.rows.len();
        match page.rows.last() {
            Some(last) if page.full => cursor = last.cursor.clone(),
            _ => break,
        }
    }
    let took = start.elapsed();
    ensure!(rows == args.rows, "read {rows} of {} rows", args.rows);
    emit(json!({
        "bench": "source_only", "source": "snowflake", "rows": rows,
        "seconds": took.as_secs_f64(), "rows_per_s": per_s(rows, took), "page": args.page,
    }));
    Ok(())
}
