//! `freshet bench cluster`: what sharing pipelines through PostgreSQL
//! costs and gives. Three figures, against the database `--url-env` names:
//!
//! - one pipeline end to end with the SQLite store, then the PostgreSQL
//!   store under a lease (every commit checking its epoch);
//! - N pipelines on 1, 2 and 3 host processes (on this machine they share
//!   its cores: the figure shows the overhead of sharing, not more CPU);
//! - failover: SIGKILL the host holding the most pipelines, ten times, and
//!   time until every one of them has a new owner.

use super::{emit, peers, per_s, record_target, OrdersPipeline, OrdersSource, SharedState};
use crate::source::Timestamp;
use crate::state::postgres::PostgresState;
use crate::state::StateStore as _;
use anyhow::{ensure, Context as _};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Arguments of `freshet bench cluster`.
#[derive(Debug, clap::Args)]
pub struct ClusterArgs {
    /// The orders plugin component.
    #[arg(long)]
    plugin: PathBuf,
    /// The variable holding the PostgreSQL connection string (a database
    /// the bench may write `freshet.*` tables in).
    #[arg(long)]
    url_env: String,
    /// Rows of the one-pipeline runs and, split between the pipelines, of
    /// the scale runs.
    #[arg(long, default_value_t = 100_000)]
    rows: usize,
    /// Pipelines of the scale and failover runs.
    #[arg(long, default_value_t = 12)]
    pipelines: usize,
    /// SIGKILLs of the failover figure.
    #[arg(long, default_value_t = 10)]
    kills: usize,
    /// The lease TTL of the scale and failover runs, in milliseconds.
    #[arg(long, default_value_t = 2_000)]
    ttl_ms: u64,
}

/// A name no earlier run used: each run's offsets start empty.
fn run_name(prefix: &str) -> String {
    format!("{prefix}{}", Timestamp::now().0 / 1_000_000 % 100_000_000)
}

/// The config of `pipelines` orders pipelines, each over its own sample
/// table of `rows` rows in `dir`, sharing the state of `state`.
fn fleet_config(
    dir: &Path,
    args: &ClusterArgs,
    names: &[String],
    rows: usize,
    state: Option<&SharedState>,
    aep: &str,
) -> anyhow::Result<String> {
    let now = Timestamp::now();
    let mut text = String::new();
    for (i, name) in names.iter().enumerate() {
        let sub = dir.join(name);
        std::fs::create_dir_all(&sub)?;
        let db = sub.join("orders.db");
        super::sample::create_orders(
            &db,
            rows,
            now.minus(Duration::from_secs(86_400)),
            now.minus(Duration::from_secs(60)),
        )?;
        let mut p = OrdersPipeline::new(
            &sub,
            args.plugin.clone(),
            OrdersSource::Sqlite(db),
            aep.into(),
        );
        p.name = name.clone();
        p.cache_dir = dir.join("cache");
        p.page_size = 5_000;
        p.shared_state = state.cloned();
        for target in ["order-confirmation", "order-confirmed", "crm"] {
            p.targets.push_str(&record_target(
                target,
                &sub.join(format!("{target}.ndjson")),
            ));
        }
        if i == 0 {
            text.push_str(&p.render_head());
        }
        text.push_str(&p.render_pipeline());
    }
    Ok(text)
}

/// Waits until the receiver counted `want` more events than `before`.
async fn received(
    receiver: &peers::RemoteReceiver,
    before: &peers::Counts,
    want: u64,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let got = receiver.counts().await?.since(before).messages;
        if got >= want {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "{got} of {want} events after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A `freshet run` process of the fleet.
fn host(config: &Path, url_env: &str, url: &str, id: &str, log: &Path) -> anyhow::Result<Child> {
    Ok(std::process::Command::new(std::env::current_exe()?)
        .args(["run", "--config"])
        .arg(config)
        .env(url_env, url)
        .env("FRESHET_HOST_ID", id)
        .env("FRESHET_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log)?)
        .spawn()?)
}

fn stop(mut child: Child) {
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

/// Runs the three figures.
pub async fn run(args: ClusterArgs) -> anyhow::Result<()> {
    let url = std::env::var(&args.url_env)
        .with_context(|| format!("--url-env: {} is not set", args.url_env))?;
    let ttl = Duration::from_millis(args.ttl_ms);
    let store = PostgresState::connect(&url, ttl).map_err(|e| anyhow::anyhow!("{e}"))?;
    let dir = tempfile::tempdir()?;
    let receiver = peers::RemoteReceiver::start(false)?;

    // One pipeline, each store: in this process, to the receiver.
    for shared in [false, true] {
        let name = run_name(if shared { "pg" } else { "sqlite" });
        let state = shared.then(|| SharedState {
            url_env: args.url_env.clone(),
            lease_ttl_ms: 10_000,
        });
        let sub = dir.path().join(&name);
        let text = fleet_config(
            &sub,
            &args,
            std::slice::from_ref(&name),
            args.rows,
            state.as_ref(),
            &receiver.url(),
        )?;
        let config = crate::config::parse(&text)?;
        let before = receiver.counts().await?;
        let shutdown = CancellationToken::new();
        let start = Instant::now();
        let options = crate::RunOptions {
            once: !shared,
            profile: false,
        };
        let running = tokio::spawn({
            let (config, shutdown) = (config.clone(), shutdown.clone());
            async move { crate::run(&config, shutdown, options).await }
        });
        received(
            &receiver,
            &before,
            args.rows as u64,
            Duration::from_secs(600),
        )
        .await?;
        // Timed to the last event, alike for both; the SQLite run (`--once`)
        // ends by itself, the leased one (which polls on) at shutdown.
        let took = start.elapsed();
        shutdown.cancel();
        running.await??;
        emit(json!({
            "bench": "cluster_state_store", "store": if shared { "postgres" } else { "sqlite" },
            "pipelines": 1, "rows": args.rows, "seconds": took.as_secs_f64(),
            "rows_per_s": per_s(args.rows, took),
        }));
    }

    // N pipelines on 1, 2, 3 hosts.
    let per_pipeline = args.rows / args.pipelines;
    let total = per_pipeline * args.pipelines;
    let state = SharedState {
        url_env: args.url_env.clone(),
        lease_ttl_ms: args.ttl_ms,
    };
    for hosts in 1..=3 {
        let prefix = run_name("s");
        let names: Vec<String> = (0..args.pipelines)
            .map(|i| format!("{prefix}x{i:02}"))
            .collect();
        let sub = dir.path().join(&prefix);
        std::fs::create_dir_all(&sub)?;
        let text = fleet_config(
            &sub,
            &args,
            &names,
            per_pipeline,
            Some(&state),
            &receiver.url(),
        )?;
        let config = sub.join("freshet.toml");
        std::fs::write(&config, text)?;
        let before = receiver.counts().await?;
        let start = Instant::now();
        let mut children = Vec::new();
        for h in 0..hosts {
            let id = format!("{prefix}-h{h}");
            children.push(host(
                &config,
                &args.url_env,
                &url,
                &id,
                &sub.join(format!("{id}.log")),
            )?);
        }
        received(&receiver, &before, total as u64, Duration::from_secs(600)).await?;
        let took = start.elapsed();
        for child in children {
            stop(child);
        }
        emit(json!({
            "bench": "cluster_scale", "hosts": hosts, "pipelines": args.pipelines,
            "rows": total, "seconds": took.as_secs_f64(), "rows_per_s": per_s(total, took),
            "note": "hosts share this machine's cores; seconds include each host's start",
        }));
    }

    // Failover: kill the busiest host, time until its pipelines move.
    let prefix = run_name("f");
    let names: Vec<String> = (0..args.pipelines)
        .map(|i| format!("{prefix}x{i:02}"))
        .collect();
    let sub = dir.path().join(&prefix);
    std::fs::create_dir_all(&sub)?;
    let text = fleet_config(&sub, &args, &names, 10, Some(&state), &receiver.url())?;
    let config = sub.join("freshet.toml");
    std::fs::write(&config, text)?;
    let mut children: BTreeMap<String, Child> = BTreeMap::new();
    let mut next = 0;
    let mut times = Vec::new();
    let owners = |store: &PostgresState| -> anyhow::Result<BTreeMap<String, Option<String>>> {
        Ok(store
            .leases()
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .into_iter()
            .filter(|l| names.contains(&l.pipeline))
            .map(|l| (l.pipeline, l.owner))
            .collect())
    };
    while times.len() < args.kills {
        while children.len() < 3 {
            let id = format!("{prefix}-h{next}");
            next += 1;
            children.insert(
                id.clone(),
                host(
                    &config,
                    &args.url_env,
                    &url,
                    &id,
                    &sub.join(format!("{id}.log")),
                )?,
            );
        }
        // Balanced: every pipeline owned, by the three live hosts.
        let deadline = Instant::now() + Duration::from_secs(60);
        let victim = loop {
            let owners = owners(&store)?;
            let mut count: BTreeMap<String, usize> = BTreeMap::new();
            for o in owners.values().flatten() {
                *count.entry(o.clone()).or_default() += 1;
            }
            let share = args.pipelines.div_ceil(3);
            if owners.len() == args.pipelines
                && owners.values().all(Option::is_some)
                && count.len() == 3
                && count.values().all(|n| *n <= share)
            {
                break count
                    .into_iter()
                    .max_by_key(|(_, n)| *n)
                    .map(|(h, _)| h)
                    .context("a host")?;
            }
            ensure!(Instant::now() < deadline, "not balanced: {count:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let mut child = children.remove(&victim).context("the victim runs")?;
        child.kill()?;
        let killed = Instant::now();
        child.wait()?;
        loop {
            let owners = owners(&store)?;
            if owners
                .values()
                .all(|o| o.as_deref().is_some_and(|o| o != victim))
            {
                break;
            }
            ensure!(
                killed.elapsed() < ttl * 10,
                "{victim}'s pipelines never moved"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        times.push(killed.elapsed().as_secs_f64());
    }
    for (_, child) in children {
        stop(child);
    }
    times.sort_by(f64::total_cmp);
    emit(json!({
        "bench": "cluster_failover", "kills": times.len(), "pipelines": args.pipelines,
        "ttl_seconds": ttl.as_secs_f64(),
        "median_seconds": times[times.len() / 2], "max_seconds": times[times.len() - 1],
        "seconds": times,
    }));
    Ok(())
}
