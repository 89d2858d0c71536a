//! Multi-tenant figures: `freshet bench noisy` (one tenant's rows/s with
//! and without a neighbour whose plugin burns its whole CPU budget on every
//! row) and `freshet bench density` (host memory per idle pipeline, and how
//! long a thousand pipelines take to start).

use super::peers::RemoteReceiver;
use super::{emit, per_s, record_target, sample, OrdersPipeline, OrdersSource};
use crate::source::Timestamp;
use crate::state::StateStore as _;
use anyhow::{ensure, Context as _};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Arguments of `freshet bench noisy`.
#[derive(Debug, clap::Args)]
pub struct NoisyArgs {
    /// Tenant A's plugin: the example orders plugin.
    #[arg(long)]
    plugin: PathBuf,
    /// Tenant B's plugin: one whose rows with status `loop` spin until the
    /// sandbox stops them (the tests' hostile plugin).
    #[arg(long)]
    noisy: PathBuf,
    /// Tenant A's rows per run.
    #[arg(long, default_value_t = 100_000)]
    rows: usize,
    /// Runs of each kind, alternated.
    #[arg(long, default_value_t = 2)]
    runs: usize,
}

/// Arguments of `freshet bench density`.
#[derive(Debug, clap::Args)]
pub struct DensityArgs {
    /// The plugin every pipeline runs.
    #[arg(long)]
    plugin: PathBuf,
    /// Idle pipelines to start.
    #[arg(long, default_value_t = 1_000)]
    pipelines: usize,
}

/// A pipeline of `tenant` over `db`, its actions recorded under `dir`.
fn tenant_pipeline(dir: &Path, name: &str, plugin: &Path, db: &Path, aep: &str) -> String {
    let mut p = OrdersPipeline::new(
        dir,
        plugin.to_owned(),
        OrdersSource::Sqlite(db.to_owned()),
        aep.to_owned(),
    );
    p.name = name.into();
    p.tenant = Some(name.into());
    p.page_size = 5_000;
    for target in ["order-confirmation", "order-confirmed", "crm", "hook"] {
        p.targets.push_str(&record_target(
            target,
            &dir.join(format!("{name}-{target}.ndjson")),
        ));
    }
    p.render_pipeline()
}

/// Loads `plugins` once so the runs below find them compiled in the cache.
fn precompile(cache: &Path, plugins: &[&Path]) -> anyhow::Result<()> {
    let runtime = crate::plugin::Runtime::new(&crate::plugin::EngineSettings {
        cache_dir: Some(cache.to_owned()),
        ..Default::default()
    })?;
    for plugin in plugins {
        runtime
            .load(plugin)
            .with_context(|| format!("{}", plugin.display()))?;
    }
    Ok(())
}

/// Runs tenant A's rows, with or without B beside it; A's rows/s.
async fn noisy_run(args: &NoisyArgs, with_b: bool) -> anyhow::Result<serde_json::Value> {
    let dir = tempfile::tempdir()?;
    let now = Timestamp::now();
    let a_db = dir.path().join("a.db");
    sample::create_orders(
        &a_db,
        args.rows,
        now.minus(Duration::from_secs(86_400)),
        now.minus(Duration::from_secs(60)),
    )?;
    let receiver = RemoteReceiver::start(false)?;
    let mut head = OrdersPipeline::new(
        dir.path(),
        args.plugin.clone(),
        OrdersSource::Sqlite(a_db.clone()),
        String::new(),
    );
    head.cache_dir = dir.path().join("cache");
    precompile(&head.cache_dir, &[&args.plugin, &args.noisy])?;
    let mut text = head.render_head();
    text.push_str("[tenants.a]\n[tenants.b]\n\n");
    text.push_str(&tenant_pipeline(
        dir.path(),
        "a",
        &args.plugin,
        &a_db,
        &receiver.url(),
    ));
    if with_b {
        // More rows than B can get through in A's run: B is busy throughout.
        let b_db = dir.path().join("b.db");
        sample::create_orders(
            &b_db,
            50_000,
            now.minus(Duration::from_secs(86_400)),
            now.minus(Duration::from_secs(60)),
        )?;
        rusqlite::Connection::open(&b_db)?.execute("UPDATE orders SET status = 'loop'", [])?;
        // Small pages, so B commits (and counts) its stopped rows as it goes.
        text.push_str(
            &tenant_pipeline(dir.path(), "b", &args.noisy, &b_db, &receiver.url())
                .replace("page_size = 5000", "page_size = 50")
                .replace("batch_size = 500", "batch_size = 50"),
        );
    }
    let config = crate::config::parse(&text)?;
    let shutdown = CancellationToken::new();
    let start = Instant::now();
    let running = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { crate::run(&config, shutdown, crate::RunOptions::default()).await }
    });
    while receiver.counts().await?.messages < args.rows as u64 {
        ensure!(!running.is_finished(), "the run stopped early");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = start.elapsed();
    shutdown.cancel();
    let results = running.await??;
    let b_failed = results
        .iter()
        .find(|(name, _)| name == "b")
        .map_or(0, |(_, s)| s.plugin_errors.total());
    Ok(json!({
        "bench": "noisy_neighbour", "with_b": with_b, "a_rows": args.rows,
        "seconds": took.as_secs_f64(), "a_rows_per_s": per_s(args.rows, took),
        "b_rows_stopped": b_failed,
    }))
}

/// `freshet bench noisy`.
pub async fn noisy(args: NoisyArgs) -> anyhow::Result<()> {
    let mut alone = Vec::new();
    let mut beside = Vec::new();
    for _ in 0..args.runs {
        for with_b in [false, true] {
            let line = noisy_run(&args, with_b).await?;
            let rate = line["a_rows_per_s"].as_f64().unwrap_or(0.0);
            if with_b { &mut beside } else { &mut alone }.push(rate);
            emit(line);
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let (a, b) = (mean(&alone), mean(&beside));
    emit(json!({
        "bench": "noisy_neighbour_summary", "a_alone_rows_per_s": a.round(),
        "a_beside_b_rows_per_s": b.round(), "a_loses_percent": ((1.0 - b / a) * 1000.0).round() / 10.0,
    }));
    Ok(())
}

/// The process's resident set, in bytes.
fn rss_bytes() -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS in /proc/self/status")?;
    Ok(kb * 1024)
}

/// `freshet bench density`.
pub async fn density(args: DensityArgs) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("orders.db");
    rusqlite::Connection::open(&db)?.execute_batch(sample::ORDERS_SCHEMA)?;
    let receiver = RemoteReceiver::start(false)?;
    let mut head = OrdersPipeline::new(
        dir.path(),
        args.plugin.clone(),
        OrdersSource::Sqlite(db.clone()),
        String::new(),
    );
    head.cache_dir = dir.path().join("cache");
    precompile(&head.cache_dir, &[&args.plugin])?;
    let mut text = head.render_head();
    for i in 0..args.pipelines {
        let mut p = head.clone();
        p.name = format!("p{i:05}");
        p.aep_url = receiver.url();
        p.poll_interval_ms = 1_000;
        text.push_str(&p.render_pipeline());
    }
    let config = crate::config::parse(&text)?;
    // First start stores each pipeline's first offset; a restart reads it.
    for start in ["first", "restart"] {
        emit(density_run(&config, args.pipelines, start).await?);
    }
    Ok(())
}

/// Starts every pipeline of `config`, waits until each has stored its
/// offset and polled a few times, and measures.
async fn density_run(
    config: &crate::config::Config,
    pipelines: usize,
    label: &str,
) -> anyhow::Result<serde_json::Value> {
    let state = crate::state::sqlite::SqliteState::open(&config.state.path)?;
    let before = rss_bytes()?;
    let shutdown = CancellationToken::new();
    let start = Instant::now();
    // Start-up: every pipeline built (plugin loaded, table checked) and
    // running, each with its offset stored (the first start writes it).
    let built = crate::pipeline::build_all(config, &shutdown).await?;
    let mut running = tokio::task::JoinSet::new();
    for pipeline in built {
        let shutdown = shutdown.clone();
        running.spawn(async move { pipeline.run(shutdown, crate::RunOptions::default()).await });
    }
    while state.offsets()?.len() < pipelines {
        ensure!(running.len() == pipelines, "a pipeline stopped early");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let startup = start.elapsed();
    // A few polls each, so every pipeline has done its first real work.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = rss_bytes()?;
    shutdown.cancel();
    let mut polls = 0;
    while let Some(stats) = running.join_next().await {
        polls += stats??.polls;
    }
    let mib = |b: u64| (b as f64 / 1048576.0 * 10.0).round() / 10.0;
    Ok(json!({
        "bench": "density", "start": label, "pipelines": pipelines,
        "startup_seconds": startup.as_secs_f64(),
        "rss_before_mib": mib(before), "rss_after_mib": mib(after),
        "rss_per_pipeline_kib": ((after.saturating_sub(before)) as f64 / pipelines as f64 / 1024.0).round(),
        "polls": polls,
    }))
}
