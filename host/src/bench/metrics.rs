//! `freshet bench metrics`: what exporting metrics costs the hot path. The
//! same end-to-end run (SQLite, the orders plugin with its actions, a
//! receiver process) with `[admin]` — metrics recorded per page, `/metrics`
//! scraped every second, as an eager Prometheus would — and without, in
//! alternating order, several times; the medians compared.

use super::{blocking, emit, end_to_end, peers, plugin_only, sample_orders, EndToEnd};
use crate::bench::OrdersSource;
use crate::source::Timestamp;
use anyhow::Context as _;
use serde_json::json;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The variable holding the bench host's operator token.
pub(super) const TOKEN_ENV: &str = "FRESHET_BENCH_ADMIN_TOKEN";

/// Arguments of `freshet bench metrics`.
#[derive(Debug, clap::Args)]
pub struct MetricsArgs {
    /// The orders plugin component.
    #[arg(long)]
    plugin: PathBuf,
    /// Rows in each run.
    #[arg(long, default_value_t = 200_000)]
    rows: usize,
    /// Runs of each kind (alternating).
    #[arg(long, default_value_t = 3)]
    pairs: usize,
    /// Rows per plugin call.
    #[arg(long, default_value_t = 500)]
    batch: usize,
    /// Rows per page query.
    #[arg(long, default_value_t = 5_000)]
    page: usize,
}

/// A loopback address free now, for a bench host's admin server.
pub(super) fn listen_address() -> String {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "127.0.0.1:0".into())
}

/// Reads the host's `/metrics` every second until aborted.
pub(super) fn scrape_every_second(config: &crate::config::Config) -> tokio::task::JoinHandle<()> {
    let listen = config.admin.as_ref().map(|a| a.listen.clone());
    tokio::spawn(async move {
        let Some(listen) = listen else { return };
        let client = reqwest::Client::new();
        let url = format!("http://{listen}/metrics");
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if let Ok(response) = client.get(&url).send().await {
                let _ = response.bytes().await;
            }
        }
    })
}

/// The recording alone, timed precisely: what one committed page of
/// `rows` rows (each delivered with one action) adds to the hot path, in µs
/// per row. End-to-end runs on two shared cores vary more than this.
fn recording_us_per_row(rows: usize) -> f64 {
    let metrics = crate::metrics::Metrics::default();
    let pipeline = metrics.pipeline("bench", "orders");
    let errors = crate::plugin::FailureCounts::default();
    let now = Timestamp::now();
    let stamps: Vec<Timestamp> = (0..rows as i64)
        .map(|i| Timestamp(now.0 - i * 1_000_000))
        .collect();
    let pages = 200;
    let started = std::time::Instant::now();
    for _ in 0..pages {
        // As the pipeline does per page: ages from the row timestamps, then
        // the page's figures.
        let at = Timestamp::now();
        let ages: Vec<f64> = stamps.iter().map(|ts| (at.0 - ts.0) as f64 / 1e9).collect();
        let actions = [("order-confirmation".to_owned(), "done", rows as u64)];
        pipeline.committed(&crate::metrics::PageFigures {
            rows: rows as u64,
            delivered: rows as u64,
            refused: 0,
            actions: &actions,
            dead_letters: &[],
            plugin_errors: &errors,
            latency: Duration::from_millis(20),
            row_ages: &ages,
            instances: 2,
        });
    }
    started.elapsed().as_secs_f64() * 1e6 / (pages * rows) as f64
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// Runs the comparison.
pub(super) async fn run(args: MetricsArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.pairs > 0, "--pairs must be at least 1");
    // The admin server reads its token from the environment; set once, before
    // any host of this process starts (as the Snowflake bench sets its
    // password).
    std::env::set_var(TOKEN_ENV, "bench-operator-token-0123456789");
    let dir = tempfile::tempdir()?;
    let (db, rows) = sample_orders(dir.path(), args.rows).await?;
    // Compiled once into the cache every run loads from.
    let rows = Arc::new(rows);
    let cache = dir.path().join("cache");
    blocking({
        let (plugin, cache, rows) = (args.plugin.clone(), cache.clone(), rows.clone());
        move || plugin_only(&plugin, &cache, &rows, args.batch)
    })
    .await
    .context("warming the component cache")?;
    let receiver = peers::RemoteReceiver::start(false)?;
    // Rows/s, and the host's CPU per row: wall time on two shared cores
    // wanders by several per cent between identical runs, CPU time less.
    let (mut off, mut on) = (Vec::new(), Vec::new());
    let (mut cpu_off, mut cpu_on) = (Vec::new(), Vec::new());
    for pair in 0..args.pairs {
        // Alternate which goes first, so neither always runs on a warmer
        // machine.
        let order = if pair % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for metrics in order {
            let run = EndToEnd {
                plugin: &args.plugin,
                cache: &cache,
                rows: args.rows,
                page: args.page,
                batch: args.batch,
                actions: true,
                metrics,
            };
            let run_dir = dir.path().join(format!("run-{pair}-{metrics}"));
            let cpu = crate::profile::process_cpu();
            let figure =
                end_to_end(&run_dir, OrdersSource::Sqlite(db.clone()), &run, &receiver).await?;
            let used = crate::profile::process_cpu().saturating_sub(cpu);
            let us_per_row = (used.as_secs_f64() * 1e8 / args.rows as f64).round() / 100.0;
            if metrics {
                on.push(figure);
                cpu_on.push(us_per_row);
            } else {
                off.push(figure);
                cpu_off.push(us_per_row);
            }
        }
    }
    let (median_off, median_on) = (median(off.clone()), median(on.clone()));
    let (cpu_median_off, cpu_median_on) = (median(cpu_off.clone()), median(cpu_on.clone()));
    let percent = |x: f64| (x * 1000.0).round() / 10.0;
    emit(json!({
        "bench": "metrics_overhead", "rows": args.rows,
        "off_rows_per_s": off, "on_rows_per_s": on,
        "median_off": median_off, "median_on": median_on,
        "cost_percent": percent(1.0 - median_on / median_off),
        "cpu_us_per_row_off": cpu_off, "cpu_us_per_row_on": cpu_on,
        "cpu_cost_percent": percent(cpu_median_on / cpu_median_off - 1.0),
    }));
    let recording = recording_us_per_row(args.page);
    let host = 1e6 / median_off;
    emit(json!({
        "bench": "metrics_recording", "page": args.page,
        "us_per_row": (recording * 1000.0).round() / 1000.0,
        "percent_of_a_row_end_to_end": percent(recording / host),
    }));
    Ok(())
}
