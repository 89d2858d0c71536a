//! `freshet bench languages`: the same orders plugin built in several
//! languages, side by side — component size, cold compile, cached load,
//! instantiation, µs per row in batches of 1 and 100 (and where a 100-row
//! call's time goes: guest, boundary, host), and end-to-end rows/s.
//! One JSON line per language, then one comparing each to the first.

use super::{
    bench_context, blocking, emit, end_to_end, ms, plugin_rate, sample_orders, timing_per_row,
    EndToEnd, OrdersSource, PluginRate,
};
use crate::plugin::contract::Row;
use crate::plugin::{EngineSettings, Origin, Runtime, Sandbox};
use anyhow::{ensure, Context as _};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Arguments of `freshet bench languages`.
#[derive(Debug, clap::Args)]
pub struct LanguagesArgs {
    /// `NAME=PATH` of one language's orders plugin; repeat for each. The
    /// first is the one the others are compared with (Rust, usually).
    #[arg(long = "plugin", required = true, value_parser = named_path)]
    plugins: Vec<(String, PathBuf)>,
    /// Rows in each end-to-end run.
    #[arg(long, default_value_t = 100_000)]
    rows: usize,
    /// Rows per plugin call in the end-to-end runs.
    #[arg(long, default_value_t = 500)]
    batch: usize,
    /// Rows per page query in the end-to-end runs.
    #[arg(long, default_value_t = 5_000)]
    page: usize,
}

fn named_path(arg: &str) -> Result<(String, PathBuf), String> {
    match arg.split_once('=') {
        Some((name, path)) if !name.is_empty() && !path.is_empty() => {
            Ok((name.to_owned(), path.into()))
        }
        _ => Err(format!(
            "`{arg}` is not NAME=PATH (e.g. python=plugins/python/target/orders.wasm)"
        )),
    }
}

/// Rows called one at a time, and in batches of 100: enough for a steady
/// figure from the slowest engine in a few seconds.
const SINGLE_ROWS: usize = 5_000;
const BATCHED_ROWS: usize = 20_000;
/// Repeats of the short measurements (cached load, instantiate); the median counts.
const REPEATS: usize = 15;

/// Runs the figures for every plugin named.
pub async fn run(args: LanguagesArgs) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (db, rows) = sample_orders(dir.path(), args.rows).await?;
    let rows = Arc::new(rows);

    let receiver = super::peers::RemoteReceiver::start(false)?;
    let mut rates = Vec::new();
    for (name, plugin) in &args.plugins {
        let cache = dir.path().join(format!("cache-{name}"));
        let size = std::fs::metadata(plugin)
            .with_context(|| format!("{name}: reading {}", plugin.display()))?
            .len();

        let figures = blocking({
            let (name, plugin, cache, rows) =
                (name.clone(), plugin.clone(), cache.clone(), rows.clone());
            move || measure(&name, &plugin, &cache, &rows)
        })
        .await?;
        let run = EndToEnd {
            plugin,
            cache: &cache,
            rows: args.rows,
            page: args.page,
            batch: args.batch,
            actions: true,
            metrics: false,
        };
        let end_to_end_dir = dir.path().join(format!("end-to-end-{name}"));
        let rows_per_s = end_to_end(
            &end_to_end_dir,
            OrdersSource::Sqlite(db.clone()),
            &run,
            &receiver,
        )
        .await?;
        emit(json!({
            "bench": "language", "language": name, "component_bytes": size,
            "compile_ms": ms(figures.compile), "cached_load_ms": ms(figures.cached_load),
            "instantiate_us": ms(figures.instantiate) * 1e3,
            "us_per_row_batch_1": figures.single.us_per_row,
            "us_per_row_batch_100": figures.batched.us_per_row,
            "timing_us_per_row_batch_100": figures.timing,
            "end_to_end_rows_per_s": rows_per_s,
        }));
        rates.push((name, rows_per_s));
    }
    let (reference, reference_rate) = rates[0];
    for (name, rate) in &rates[1..] {
        emit(json!({
            "bench": "language_ratio", "language": name, "compared_with": reference,
            "end_to_end_ratio": (rate / reference_rate * 100.0).round() / 100.0,
        }));
    }
    Ok(())
}

/// One plugin's figures apart from the end-to-end run.
struct Figures {
    compile: Duration,
    /// Medians of [`REPEATS`].
    cached_load: Duration,
    instantiate: Duration,
    single: PluginRate,
    batched: PluginRate,
    /// Where a warm 100-row call's time goes, µs a row.
    timing: serde_json::Value,
}

/// Compile, cached load, instantiation and µs per row of one plugin.
fn measure(
    name: &str,
    plugin: &Path,
    cache: &Path,
    (columns, rows): &(Vec<String>, Vec<Row>),
) -> anyhow::Result<Figures> {
    // Cold: a new engine and an empty cache, so Cranelift compiles it.
    let (compile, loaded) = load(plugin, cache)?;
    ensure!(
        loaded.origin() == Origin::Compiled,
        "{name}: expected a cold compile"
    );
    // Cached: a new engine each time (a restarted host), the precompiled
    // artifact from disk.
    let mut cached = Vec::with_capacity(REPEATS);
    for _ in 0..REPEATS {
        let (took, again) = load(plugin, cache)?;
        ensure!(
            again.origin() == Origin::DiskCache,
            "{name}: expected the disk cache"
        );
        cached.push(took);
    }
    let sandbox = Sandbox::new(loaded, bench_context());
    let mut instantiate = Vec::with_capacity(REPEATS);
    for _ in 0..REPEATS {
        sandbox.release();
        let start = Instant::now();
        sandbox.warm_up()?;
        instantiate.push(start.elapsed());
    }
    Ok(Figures {
        compile,
        cached_load: median(&mut cached),
        instantiate: median(&mut instantiate),
        single: plugin_rate(&sandbox, columns, &rows[..SINGLE_ROWS.min(rows.len())], 1)?,
        batched: plugin_rate(
            &sandbox,
            columns,
            &rows[..BATCHED_ROWS.min(rows.len())],
            100,
        )?,
        timing: timing_per_row(&sandbox, columns, rows, 100)?,
    })
}

/// Loads `plugin` into a new engine caching compiled components in
/// `cache`; the time is the load's alone, not the engine's set-up.
fn load(plugin: &Path, cache: &Path) -> anyhow::Result<(Duration, crate::plugin::Plugin)> {
    let runtime = Runtime::new(&EngineSettings {
        cache_dir: Some(cache.to_owned()),
        ..Default::default()
    })?;
    let start = Instant::now();
    let loaded = runtime.load(plugin)?;
    Ok((start.elapsed(), loaded))
}

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}
