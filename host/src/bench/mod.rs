//! `freshet bench`: throughput figures any user can reproduce on their own
//! machine, one JSON line each. Not a test: nothing here passes or fails on
//! speed; it fails only if rows went missing.

pub mod emulator;
mod latency;
mod native;
mod orders_config;
pub mod receiver;
pub mod sample;
mod snowflake;
mod tenants;

use crate::plugin::contract::{Row, RowBatch};
use crate::plugin::{CallContext, Limits, Runtime, Sandbox};
use crate::source::{Cursor, Source as _, Timestamp};
pub use orders_config::{
    record_target, webhook_target, OrdersPipeline, OrdersSource, SnowflakeOrders,
};

use anyhow::{ensure, Context as _};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Arguments of `freshet bench`: throughput figures, or with `latency`,
/// insert-to-webhook latency.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    command: Option<BenchCommand>,
    #[command(flatten)]
    throughput: ThroughputArgs,
}

#[derive(Debug, clap::Subcommand)]
enum BenchCommand {
    /// Latency from insert commit to webhook and to AEP, at steady insert rates.
    Latency(latency::LatencyArgs),
    /// Rows/s from Snowflake (the local emulator) beside the same rows from SQLite.
    Snowflake(snowflake::SnowflakeArgs),
    /// One tenant's rows/s with and without a neighbour burning its CPU budget.
    Noisy(tenants::NoisyArgs),
    /// Host memory per idle pipeline and start-up time of many pipelines.
    Density(tenants::DensityArgs),
}

/// Arguments of the throughput figures.
#[derive(Debug, clap::Args)]
pub struct ThroughputArgs {
    /// The example orders plugin component.
    #[arg(long, required = true)]
    plugin: Option<PathBuf>,
    /// Rows in the end-to-end run.
    #[arg(long, default_value_t = 200_000)]
    rows: usize,
    /// Rows per plugin call.
    #[arg(long, default_value_t = 500)]
    batch: usize,
    /// Rows per page query.
    #[arg(long, default_value_t = 5_000)]
    page: usize,
}

fn emit(line: serde_json::Value) {
    println!("{line}");
}

/// The config of an end-to-end run: `source` → plugin → loopback AEP, the
/// actions recorded to files (their own executors are measured elsewhere).
fn bench_config(
    dir: &Path,
    source: OrdersSource,
    plugin: &Path,
    aep: &str,
    page: usize,
    batch: usize,
) -> String {
    let mut config = OrdersPipeline::new(dir, plugin.to_owned(), source, aep.to_owned());
    config.page_size = page;
    config.batch_size = batch;
    for name in ["order-confirmation", "order-confirmed", "crm"] {
        config
            .targets
            .push_str(&record_target(name, &dir.join(format!("{name}.ndjson"))));
    }
    config.render()
}

/// One end-to-end run over `rows` rows, offsets committed; prints its line.
async fn end_to_end(
    dir: &Path,
    source: OrdersSource,
    plugin: &Path,
    rows: usize,
    page: usize,
    batch: usize,
) -> anyhow::Result<()> {
    let kind = match &source {
        OrdersSource::Sqlite(_) => "sqlite",
        OrdersSource::Snowflake(_) => "snowflake",
    };
    std::fs::create_dir_all(dir)?;
    let receiver = receiver::Receiver::start(false).await?;
    let text = bench_config(dir, source, plugin, &receiver.url(), page, batch);
    let config = crate::config::parse(&text)?;
    let start = Instant::now();
    let results = crate::run(
        &config,
        CancellationToken::new(),
        crate::RunOptions { once: true },
    )
    .await?;
    let took = start.elapsed();
    let stats = results.first().map(|(_, s)| *s).unwrap_or_default();
    ensure!(
        receiver.message_count() == rows as u64,
        "the receiver got {} of {rows} events",
        receiver.message_count(),
    );
    emit(json!({
        "bench": "end_to_end", "source": kind, "rows": rows, "seconds": took.as_secs_f64(),
        "rows_per_s": per_s(rows, took), "aep_requests": receiver.request_count(),
        "actions": stats.actions, "batch": batch, "page": page,
        "page_queries": stats.page_queries, "probes": stats.probes,
    }));
    Ok(())
}

/// Runs the chosen benchmark.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.command {
        Some(BenchCommand::Latency(latency)) => latency::run(latency).await,
        Some(BenchCommand::Snowflake(args)) => snowflake::run(args).await,
        Some(BenchCommand::Noisy(args)) => tenants::noisy(args).await,
        Some(BenchCommand::Density(args)) => tenants::density(args).await,
        None => throughput(args.throughput).await,
    }
}

/// Runs every throughput figure.
async fn throughput(args: ThroughputArgs) -> anyhow::Result<()> {
    let plugin_path = args.plugin.clone().context("--plugin is required")?;
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("orders.db");
    let now = Timestamp::now();
    sample::create_orders(
        &db,
        args.rows,
        now.minus(Duration::from_secs(86_400)),
        now.minus(Duration::from_secs(60)),
    )?;
    let rows = read_all(&db).await?;

    // Plugin only: the sandbox boundary and the guest's work, no I/O. The
    // compiled component lands in the cache the end-to-end run loads from,
    // so that run measures rows, not compilation.
    let runtime = Runtime::new(&crate::plugin::EngineSettings {
        cache_dir: Some(dir.path().join("cache")),
        ..Default::default()
    })?;
    let compile_start = Instant::now();
    let plugin = runtime.load(&plugin_path)?;
    let compile = compile_start.elapsed();
    let ctx = CallContext::new(
        "bench",
        "bench",
        Limits::default(),
        [("tenant".to_owned(), "acme".to_owned())].into(),
        Default::default(),
    );
    let sandbox = Sandbox::new(plugin, ctx);
    emit(
        json!({"bench": "plugin_load", "component_bytes": std::fs::metadata(&plugin_path)?.len(), "compile_ms": ms(compile)}),
    );
    for batch in [1, args.batch] {
        let sample = if batch == 1 {
            &rows.1[..rows.1.len().min(20_000)]
        } else {
            &rows.1[..]
        };
        let (mut map_time, mut decide_time) = (Duration::ZERO, Duration::ZERO);
        let mut events = 0;
        for chunk in sample.chunks(batch) {
            let batch = RowBatch {
                columns: rows.0.clone(),
                rows: chunk.to_vec(),
            };
            let start = Instant::now();
            let mapped: Vec<_> = sandbox
                .map_rows(&batch)
                .into_iter()
                .flat_map(|o| o.unwrap_or_default())
                .collect();
            map_time += start.elapsed();
            events += mapped.len();
            let start = Instant::now();
            sandbox.decide(&mapped);
            decide_time += start.elapsed();
        }
        let took = map_time + decide_time;
        ensure!(
            events == sample.len(),
            "the plugin mapped {events} of {} rows",
            sample.len()
        );
        emit(json!({
            "bench": "plugin", "rows": sample.len(), "batch": batch, "us_per_row": us_per(took, sample.len()),
            "map_us_per_row": us_per(map_time, sample.len()), "decide_us_per_row": us_per(decide_time, sample.len()),
            "rows_per_s": per_s(sample.len(), took),
        }));
    }

    // The same mapping natively.
    let cols = native::OrderColumns::resolve(&rows.0).context("the sample table lacks a column")?;
    let start = Instant::now();
    let mut produced = (0, 0);
    for row in &rows.1 {
        let (e, a) = native::map_and_decide(row, &cols, "acme");
        produced.0 += e;
        produced.1 += a;
    }
    let took = start.elapsed();
    ensure!(
        produced.0 == rows.1.len(),
        "native mapping produced {} events",
        produced.0
    );
    emit(
        json!({"bench": "native", "rows": rows.1.len(), "us_per_row": us_per(took, rows.1.len()), "rows_per_s": per_s(rows.1.len(), took)}),
    );

    // End to end, offsets committed.
    end_to_end(
        &dir.path().join("end-to-end"),
        OrdersSource::Sqlite(db),
        &plugin_path,
        args.rows,
        args.page,
        args.batch,
    )
    .await
}

/// Every row of the sample table, as the SQLite source reads them.
async fn read_all(db: &Path) -> anyhow::Result<(Vec<String>, Vec<Row>)> {
    let config: crate::config::SqliteSourceConfig = serde_json::from_value(json!({
        "path": db, "table": "orders", "key_column": "id",
        "timestamp": {"column": "updated_at", "unit": "ms"},
    }))?;
    let source = Arc::new(crate::source::sqlite::SqliteSource::open(
        &config,
        "bench.source",
    )?);
    let page = source
        .page(
            &Cursor::before(Timestamp::EPOCH),
            Timestamp::now(),
            usize::MAX >> 1,
        )
        .await?;
    Ok((
        source.columns().to_vec(),
        page.rows.into_iter().map(|r| r.row).collect(),
    ))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn us_per(d: Duration, n: usize) -> f64 {
    d.as_secs_f64() * 1e6 / n.max(1) as f64
}

fn per_s(n: usize, d: Duration) -> f64 {
    (n as f64 / d.as_secs_f64()).round()
}
