//! `freshet bench latency`: how long a new row takes to become a webhook
//! call and an AEP message, while a writer inserts orders at a steady rate.
//!
//! Per rate: an empty `orders` table (SQLite in WAL mode, so the writer and
//! the pipeline never block each other), the pipeline polling it, the
//! example plugin deciding an `order-confirmed` webhook for every order
//! (all are confirmed), and the loopback receiver noting when each webhook
//! and each AEP message arrives. Latency is from the writer's commit to the
//! arrival; the percentiles are over every row of the run. The receiver is
//! a process of its own, so both ends are read on the wall clock (in µs
//! since the epoch), which this machine's processes share.

use super::orders_config::{record_target, webhook_target, OrdersPipeline};
use super::peers::{Arrival, RemoteReceiver};
use anyhow::{ensure, Context as _};
use rusqlite::{params, Connection};
use serde_json::json;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;

/// Arguments of `freshet bench latency`.
#[derive(Debug, clap::Args)]
pub struct LatencyArgs {
    /// The example orders plugin component.
    #[arg(long)]
    plugin: PathBuf,
    /// Insert rates to measure, in rows per second.
    #[arg(long, value_delimiter = ',', default_value = "10,100,1000")]
    rates: Vec<u32>,
    /// Seconds of steady inserts per rate.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// The pipeline's poll interval, in milliseconds.
    #[arg(long, default_value_t = 100)]
    poll_interval_ms: u64,
}

/// Runs every rate.
pub async fn run(args: LatencyArgs) -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let cache = root.path().join("cache");
    for &rate in &args.rates {
        ensure!(rate > 0, "--rates: a rate must be above 0");
        let dir = root.path().join(format!("rate-{rate}"));
        std::fs::create_dir_all(&dir)?;
        measure(&args, rate, &dir, &cache)
            .await
            .with_context(|| format!("at {rate} rows/s"))?;
    }
    Ok(())
}

/// Milliseconds from each commit (µs since the epoch) to the matching
/// arrival, the order found in each arrival's body by `order_id`.
fn latencies(
    committed: &HashMap<i64, u64>,
    arrivals: &[Arrival],
    order_id: impl Fn(&serde_json::Value) -> Option<i64>,
) -> Vec<f64> {
    let mut out: Vec<f64> = arrivals
        .iter()
        .filter_map(|arrival| {
            let start = committed.get(&order_id(&arrival.body)?)?;
            Some(arrival.at_unix_us.saturating_sub(*start) as f64 / 1e3)
        })
        .collect();
    out.sort_by(f64::total_cmp);
    out
}

/// The q-quantile of sorted values (nearest rank).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len().max(1));
    sorted.get(rank - 1).copied().unwrap_or(f64::NAN)
}

fn report(rate: u32, path: &str, sorted: &[f64], expected: usize) {
    let round = |v: f64| (v * 10.0).round() / 10.0;
    println!(
        "{}",
        json!({
            "bench": "latency", "rate": rate, "path": path, "samples": sorted.len(), "expected": expected,
            "p50_ms": round(quantile(sorted, 0.50)), "p90_ms": round(quantile(sorted, 0.90)),
            "p99_ms": round(quantile(sorted, 0.99)), "max_ms": round(sorted.last().copied().unwrap_or(f64::NAN)),
        })
    );
}

async fn measure(args: &LatencyArgs, rate: u32, dir: &Path, cache: &Path) -> anyhow::Result<()> {
    let db = dir.join("orders.db");
    {
        let conn = Connection::open(&db)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.execute_batch(super::sample::ORDERS_SCHEMA)?;
    }
    let receiver = RemoteReceiver::start(true)?;
    let mut pipeline = OrdersPipeline::new(
        dir,
        args.plugin.clone(),
        super::OrdersSource::Sqlite(db.clone()),
        receiver.url(),
    );
    pipeline.cache_dir = cache.to_owned();
    pipeline.poll_interval_ms = args.poll_interval_ms;
    pipeline.targets = [
        webhook_target(
            "order-confirmed",
            &format!("{}/hooks/order-confirmed", receiver.url()),
            "",
        ),
        record_target("order-confirmation", &dir.join("email.ndjson")),
        record_target("crm", &dir.join("crm.ndjson")),
    ]
    .concat();
    let config = crate::config::parse(&pipeline.render())?;
    let shutdown = CancellationToken::new();
    let running = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { crate::run(&config, shutdown, crate::RunOptions::default()).await }
    });
    // Let the pipeline load its plugin and settle into polling.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let total = (u64::from(rate) * args.seconds) as usize;
    let writer = tokio::task::spawn_blocking(move || insert_steadily(&db, rate, total));
    let committed = writer.await??;
    let deadline = Instant::now() + Duration::from_secs(30);
    while receiver.counts().await?.hooks < total as u64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shutdown.cancel();
    running.await??;

    let order_id = |v: &serde_json::Value| v.as_str().and_then(|s| s.parse::<i64>().ok());
    let hooks = latencies(&committed, &receiver.hooks().await?, |body| {
        order_id(&body["orderId"])
    });
    let aep = latencies(&committed, &receiver.messages().await?, |envelope| {
        order_id(&envelope["body"]["xdmEntity"]["_acme"]["orderId"])
    });
    report(rate, "insert_to_webhook", &hooks, total);
    report(rate, "insert_to_aep", &aep, total);
    ensure!(
        hooks.len() == total,
        "{} of {total} webhooks arrived",
        hooks.len()
    );
    Ok(())
}

/// Inserts `total` confirmed orders at `rate` per second, one transaction
/// each, stamped with the commit-time clock; returns when each committed
/// (µs since the epoch).
fn insert_steadily(db: &Path, rate: u32, total: usize) -> anyhow::Result<HashMap<i64, u64>> {
    let conn = Connection::open(db)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    let mut insert = conn.prepare(
        "INSERT INTO orders (id, customer_email, status, amount, currency, updated_at)
         VALUES (?1, ?2, 'confirmed', '12.50', 'EUR', ?3)",
    )?;
    let start = Instant::now();
    let period = Duration::from_secs_f64(1.0 / f64::from(rate));
    let mut committed = HashMap::with_capacity(total);
    for i in 0..total {
        let due = start + period.mul_f64(i as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let id = i as i64 + 1;
        let now_ms = chrono::Utc::now().timestamp_millis();
        insert.execute(params![id, format!("customer{id}@example.com"), now_ms])?;
        let at = SystemTime::now().duration_since(UNIX_EPOCH)?;
        committed.insert(id, at.as_micros() as u64);
    }
    Ok(committed)
}
