//! `freshet bench`: throughput figures any user can reproduce on their own
//! machine, one JSON line each. Not a test: nothing here passes or fails on
//! speed; it fails only if rows went missing.

mod cluster;
mod languages;
mod latency;
mod metrics;
mod native;
mod orders_config;
pub mod peers;
mod postgres;
pub mod sample;
pub mod seed;
mod snowflake;
mod tenants;

use crate::plugin::contract::{Row, RowBatch};
use crate::plugin::{CallContext, Limits, Runtime, Sandbox};
use crate::source::{Cursor, Source as _, Timestamp};
pub use orders_config::{
    record_target, webhook_target, OrdersPipeline, OrdersSource, PostgresOrders, SharedState,
    SnowflakeOrders,
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
    /// The orders plugin in each language: size, compile, load, instantiate, µs per row, rows/s.
    Languages(languages::LanguagesArgs),
    /// End-to-end rows/s with the host's metrics exported (and scraped) and without.
    Metrics(metrics::MetricsArgs),
    /// Hosts sharing pipelines through PostgreSQL: the store's cost, scale over hosts, failover.
    Cluster(cluster::ClusterArgs),
    /// Rows/s from a PostgreSQL table beside the same rows from SQLite.
    Postgres(postgres::PostgresArgs),
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
fn bench_config(dir: &Path, source: OrdersSource, run: &EndToEnd<'_>, aep: &str) -> String {
    let mut config = OrdersPipeline::new(dir, run.plugin.to_owned(), source, aep.to_owned());
    config.cache_dir = run.cache.to_owned();
    config.page_size = run.page;
    config.batch_size = run.batch;
    if !run.actions {
        config.extra = "actions = false".into();
    }
    for name in ["order-confirmation", "order-confirmed", "crm"] {
        config
            .targets
            .push_str(&record_target(name, &dir.join(format!("{name}.ndjson"))));
    }
    let mut text = config.render();
    if let Some(listen) = run.metrics.then(metrics::listen_address) {
        text += &format!(
            "\n[admin]\nlisten = \"{listen}\"\noperator_token_env = \"{}\"\n",
            metrics::TOKEN_ENV
        );
    }
    text
}

/// What an end-to-end run reads and runs with.
struct EndToEnd<'a> {
    plugin: &'a Path,
    /// The component cache: a run that shares it with an earlier load
    /// measures rows, not compilation.
    cache: &'a Path,
    rows: usize,
    page: usize,
    batch: usize,
    /// Whether the plugin decides actions (else events only).
    actions: bool,
    /// Whether the host exports metrics (`[admin]`, scraped every second).
    metrics: bool,
}

/// One end-to-end run over `run.rows` rows to `receiver` (a process of its
/// own), offsets committed; prints its line and returns its rows/s.
async fn end_to_end(
    dir: &Path,
    source: OrdersSource,
    run: &EndToEnd<'_>,
    receiver: &peers::RemoteReceiver,
) -> anyhow::Result<f64> {
    let EndToEnd {
        rows, page, batch, ..
    } = *run;
    let kind = match &source {
        OrdersSource::Sqlite(_) => "sqlite",
        OrdersSource::Snowflake(_) => "snowflake",
        OrdersSource::Postgres(_) => "postgres",
    };
    std::fs::create_dir_all(dir)?;
    let text = bench_config(dir, source, run, &receiver.url());
    let config = crate::config::parse(&text)?;
    let before = receiver.counts().await?;
    let cpu_before = crate::profile::process_cpu();
    let start = Instant::now();
    let options = crate::RunOptions {
        once: true,
        profile: true,
    };
    let scraping = run.metrics.then(|| metrics::scrape_every_second(&config));
    let results = crate::run(&config, CancellationToken::new(), options).await?;
    let took = start.elapsed();
    if let Some(scraper) = scraping {
        scraper.abort();
    }
    let process = crate::profile::process_cpu().saturating_sub(cpu_before);
    let stats = results.first().map(|(_, s)| *s).unwrap_or_default();
    let received = receiver.counts().await?.since(&before);
    ensure!(
        received.messages == rows as u64,
        "the receiver got {} of {rows} events",
        received.messages,
    );
    let rows_per_s = per_s(rows, took);
    emit(json!({
        "bench": if run.actions { "end_to_end" } else { "end_to_end_events_only" },
        "metrics": run.metrics,
        "source": kind, "rows": rows, "seconds": took.as_secs_f64(),
        "rows_per_s": rows_per_s, "aep_requests": received.requests,
        "actions": stats.actions, "batch": batch, "page": page,
        "page_queries": stats.page_queries, "probes": stats.probes,
        "cpu_seconds_per_million_rows": stats.cpu.per_million_rows(stats.rows, process),
    }));
    Ok(rows_per_s)
}

/// Runs the chosen benchmark.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.command {
        Some(BenchCommand::Latency(latency)) => latency::run(latency).await,
        Some(BenchCommand::Snowflake(args)) => snowflake::run(args).await,
        Some(BenchCommand::Noisy(args)) => tenants::noisy(args).await,
        Some(BenchCommand::Density(args)) => tenants::density(args).await,
        Some(BenchCommand::Languages(args)) => languages::run(args).await,
        Some(BenchCommand::Metrics(args)) => metrics::run(args).await,
        Some(BenchCommand::Cluster(args)) => cluster::run(args).await,
        Some(BenchCommand::Postgres(args)) => postgres::run(args).await,
        None => throughput(args.throughput).await,
    }
}

/// `orders.db` in `dir` with `rows` sample orders of the last day (up to a
/// minute ago), and the rows as the plugin gets them.
async fn sample_orders(
    dir: &Path,
    rows: usize,
) -> anyhow::Result<(PathBuf, (Vec<String>, Vec<Row>))> {
    let db = dir.join("orders.db");
    let now = Timestamp::now();
    let day_ago = now.minus(Duration::from_secs(86_400));
    sample::create_orders(&db, rows, day_ago, now.minus(Duration::from_secs(60)))?;
    let read = read_all(&db).await?;
    Ok((db, read))
}

/// Runs every throughput figure.
async fn throughput(args: ThroughputArgs) -> anyhow::Result<()> {
    let plugin_path = args.plugin.clone().context("--plugin is required")?;
    let dir = tempfile::tempdir()?;
    let (db, rows) = sample_orders(dir.path(), args.rows).await?;

    // Plugin only: the sandbox boundary and the guest's work, no I/O. The
    // compiled component lands in the cache the end-to-end run loads from,
    // so that run measures rows, not compilation.
    let rows = Arc::new(rows);
    let cache = dir.path().join("cache");
    blocking({
        let (plugin, cache, rows) = (plugin_path.clone(), cache.clone(), rows.clone());
        move || plugin_only(&plugin, &cache, &rows, args.batch)
    })
    .await?;

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

    // The host against a plain native pipeline, on the same rows, to the
    // same receiver process: freshet with actions, events only, native.
    let receiver = peers::RemoteReceiver::start(false)?;
    let mut figures = Vec::new();
    for actions in [true, false] {
        let run = EndToEnd {
            plugin: &plugin_path,
            cache: &cache,
            rows: args.rows,
            page: args.page,
            batch: args.batch,
            actions,
            metrics: false,
        };
        let dir = dir.path().join(format!("end-to-end-{actions}"));
        let source = OrdersSource::Sqlite(db.clone());
        figures.push(end_to_end(&dir, source, &run, &receiver).await?);
    }
    let native = native_pipeline(dir.path(), &db, &args, &receiver).await?;
    let ratio = |freshet: f64| (freshet / native * 100.0).round() / 100.0;
    emit(json!({
        "bench": "host_vs_native", "native_rows_per_s": native,
        "freshet_rows_per_s": figures[0], "freshet_events_only_rows_per_s": figures[1],
        "ratio": ratio(figures[0]), "events_only_ratio": ratio(figures[1]),
    }));
    Ok(())
}

/// The plain native pipeline (see [`native::pipeline`]) over the rows in
/// `db`, configured as the end-to-end runs are; prints its line and
/// returns its rows/s.
async fn native_pipeline(
    dir: &Path,
    db: &Path,
    args: &ThroughputArgs,
    receiver: &peers::RemoteReceiver,
) -> anyhow::Result<f64> {
    let dir = dir.join("native-pipeline");
    std::fs::create_dir_all(&dir)?;
    let mut settings = OrdersPipeline::new(
        &dir,
        PathBuf::from("unused.wasm"),
        OrdersSource::Sqlite(db.to_owned()),
        receiver.url(),
    );
    settings.page_size = args.page;
    let config = crate::config::parse(&settings.render())?;
    let before = receiver.counts().await?;
    let (rows, took) = native::pipeline(&config).await?;
    let received = receiver.counts().await?.since(&before);
    ensure!(
        rows == args.rows && received.messages == rows as u64,
        "the native pipeline delivered {rows} and the receiver got {} of {} events",
        received.messages,
        args.rows
    );
    let rows_per_s = per_s(rows, took);
    emit(json!({
        "bench": "native_pipeline", "rows": rows, "seconds": took.as_secs_f64(),
        "rows_per_s": rows_per_s, "aep_requests": received.requests, "page": args.page,
    }));
    Ok(rows_per_s)
}

/// Runs `work` (plugin calls, which block) on the blocking pool: a guest
/// writing to stdout or stderr makes wasmtime-wasi block on the runtime,
/// which it must never do from a thread driving async tasks.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(work).await?
}

/// The compile figure and the plugin-only figures, in calls of 1 and of `batch` rows.
fn plugin_only(
    plugin_path: &Path,
    cache: &Path,
    rows: &(Vec<String>, Vec<Row>),
    batch: usize,
) -> anyhow::Result<()> {
    let runtime = Runtime::new(&crate::plugin::EngineSettings {
        cache_dir: Some(cache.to_owned()),
        ..Default::default()
    })?;
    let compile_start = Instant::now();
    let plugin = runtime.load(plugin_path)?;
    let compile = compile_start.elapsed();
    let sandbox = Sandbox::new(plugin, bench_context());
    emit(
        json!({"bench": "plugin_load", "component_bytes": std::fs::metadata(plugin_path)?.len(), "compile_ms": ms(compile)}),
    );
    for batch in [1, batch] {
        let sample = if batch == 1 {
            &rows.1[..rows.1.len().min(20_000)]
        } else {
            &rows.1[..]
        };
        let rate = plugin_rate(&sandbox, &rows.0, sample, batch)?;
        let timing = timing_per_row(&sandbox, &rows.0, sample, batch)?;
        emit(json!({
            "bench": "plugin", "contract": sandbox.plugin().contract(), "rows": sample.len(),
            "batch": batch, "us_per_row": rate.us_per_row,
            "map_us_per_row": rate.map_us_per_row, "decide_us_per_row": rate.decide_us_per_row,
            "rows_per_s": rate.rows_per_s, "timing_us_per_row": timing,
        }));
    }
    Ok(())
}

/// What the plugin-only figures call with: default limits, tenant `acme`.
fn bench_context() -> CallContext {
    CallContext::new(
        "bench",
        "bench",
        Limits::default(),
        [("tenant".to_owned(), "acme".to_owned())].into(),
        Default::default(),
    )
}

/// The plugin's own speed: µs per row mapping and deciding, in a warm
/// instance; for a 0.1 plugin its two calls apart (a 0.2 plugin makes one).
struct PluginRate {
    us_per_row: f64,
    map_us_per_row: Option<f64>,
    decide_us_per_row: Option<f64>,
    rows_per_s: f64,
}

/// Maps `rows` `batch` at a time and decides each batch's events, as a
/// pipeline does (one `process` call per batch for a 0.2 plugin; for 0.1,
/// `map-rows` then `decide` over the batch's events); fails if a row was
/// not mapped.
fn plugin_rate(
    sandbox: &Sandbox,
    columns: &[String],
    rows: &[Row],
    batch: usize,
) -> anyhow::Result<PluginRate> {
    if sandbox.plugin().contract().crosses_once() {
        let (mut took, mut events, mut first_error) = (Duration::ZERO, 0, None);
        for chunk in rows.chunks(batch) {
            let batch = RowBatch {
                columns: columns.to_vec(),
                rows: chunk.to_vec(),
            };
            let start = Instant::now();
            let decided = sandbox.process(&batch);
            took += start.elapsed();
            events += decided.iter().flatten().map(Vec::len).sum::<usize>();
            first_error = first_error.or_else(|| decided.into_iter().find_map(Result::err));
        }
        ensure!(
            events == rows.len(),
            "the plugin mapped {events} of {} rows (the first that failed: {})",
            rows.len(),
            first_error.map_or_else(|| "none failed".to_owned(), |e| e.to_string())
        );
        return Ok(PluginRate {
            us_per_row: us_per(took, rows.len()),
            map_us_per_row: None,
            decide_us_per_row: None,
            rows_per_s: per_s(rows.len(), took),
        });
    }
    let (mut map_time, mut decide_time) = (Duration::ZERO, Duration::ZERO);
    let mut events = 0;
    for chunk in rows.chunks(batch) {
        let batch = RowBatch {
            columns: columns.to_vec(),
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
    ensure!(
        events == rows.len(),
        "the plugin mapped {events} of {} rows",
        rows.len()
    );
    let took = map_time + decide_time;
    Ok(PluginRate {
        us_per_row: us_per(took, rows.len()),
        map_us_per_row: Some(us_per(map_time, rows.len())),
        decide_us_per_row: Some(us_per(decide_time, rows.len())),
        rows_per_s: per_s(rows.len(), took),
    })
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

/// Where a warm call over the first `batch` of `rows` spends its time, in
/// µs a row: the plugin's code (`guest`), crossing the boundary, the host's
/// functions and checks ([`crate::plugin::Timing`]).
fn timing_per_row(
    sandbox: &Sandbox,
    columns: &[String],
    rows: &[Row],
    batch: usize,
) -> anyhow::Result<serde_json::Value> {
    let batch = RowBatch {
        columns: columns.to_vec(),
        rows: rows[..batch.min(rows.len())].to_vec(),
    };
    let timing = sandbox.session().time_batch(&batch)?;
    let per = |d: Duration| us_per(d, batch.rows.len());
    Ok(json!({
        "guest": per(timing.guest), "boundary": per(timing.boundary), "host": per(timing.host),
    }))
}

fn us_per(d: Duration, n: usize) -> f64 {
    d.as_secs_f64() * 1e6 / n.max(1) as f64
}

fn per_s(n: usize, d: Duration) -> f64 {
    (n as f64 / d.as_secs_f64()).round()
}
