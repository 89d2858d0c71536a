//! The `freshet` subcommands: what each takes and prints. Each one is a thin
//! layer over the library; the work happens in the modules it calls.

pub mod plugin_test;
mod status;

use crate::config::{self, Config};
use crate::pipeline::{self, RunOptions};
use crate::source::{Cursor, Timestamp};
use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

/// freshet: warehouse rows to AEP events and journey actions through
/// sandboxed WebAssembly plugins.
#[derive(Debug, Parser)]
#[command(name = "freshet", version, about)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the pipelines of a config until Ctrl-C or SIGTERM.
    Run {
        /// The TOML config.
        #[arg(long, short)]
        config: PathBuf,
        /// Drain what is there, then exit.
        #[arg(long)]
        once: bool,
        /// Also print each pipeline's CPU seconds per million rows, by stage.
        #[arg(long)]
        profile: bool,
    },
    /// Check a config and print every problem with its key path.
    Validate {
        /// The TOML config.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Work with plugins.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
    /// Show or reset pipeline offsets.
    Offsets {
        #[command(subcommand)]
        command: OffsetsCommand,
    },
    /// Dead letters: rows, events and actions that failed for good.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Create the example `orders` table in an SQLite file.
    Sample {
        /// The SQLite file (created if missing).
        #[arg(long)]
        db: PathBuf,
        /// How many rows to add.
        #[arg(long, default_value_t = 300)]
        rows: usize,
    },
    /// Measure this machine: prints one JSON line per figure.
    Bench(crate::bench::BenchArgs),
    /// Each pipeline's owner, lease, epoch and lag, from the state store.
    Status {
        /// The TOML config.
        #[arg(long, short)]
        config: PathBuf,
        /// One JSON object per pipeline instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum PluginCommand {
    /// Run a plugin over rows from a JSON file and print what it produced and
    /// used. Touches nothing: no source, no AEP, no actions, no state.
    Test(plugin_test::TestArgs),
}

#[derive(Debug, Subcommand)]
enum OffsetsCommand {
    /// Print each pipeline's offset.
    Show {
        /// The TOML config.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Move a pipeline's offset. Without `--to`, forget it: the next start
    /// begins at the pipeline's `timestamp.initial` again.
    Reset {
        /// The TOML config.
        #[arg(long, short)]
        config: PathBuf,
        /// The pipeline.
        #[arg(long)]
        pipeline: String,
        /// Restart reading at this instant (inclusive): RFC 3339 or epoch seconds.
        #[arg(long)]
        to: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// Print dead letters as JSON lines.
    List {
        /// The TOML config.
        #[arg(long, short)]
        config: PathBuf,
        /// Only this pipeline's.
        #[arg(long)]
        pipeline: Option<String>,
    },
    /// Send dead letters again once their cause is fixed: events to AEP,
    /// actions to their targets (with their original idempotency keys).
    /// Those that succeed are removed; rows the plugin failed on are skipped
    /// (fix the plugin, then `offsets reset`). Prints one JSON line each;
    /// exit 1 if any failed again.
    Replay {
        /// The TOML config.
        #[arg(long, short)]
        config: PathBuf,
        /// Only this pipeline's.
        #[arg(long)]
        pipeline: Option<String>,
        /// Only these dead letters (repeatable); all by default.
        #[arg(long = "id")]
        ids: Vec<i64>,
    },
}

/// Loads a config, printing every problem on failure.
fn load(path: &std::path::Path) -> anyhow::Result<Config> {
    config::load_explained(path)
}

fn parse_instant(text: &str) -> anyhow::Result<Timestamp> {
    if let Ok(seconds) = text.parse::<i64>() {
        return Ok(Timestamp(seconds.saturating_mul(1_000_000_000)));
    }
    text.parse()
        .with_context(|| format!("{text:?} is neither epoch seconds nor an RFC 3339 instant"))
}

/// Cancels `shutdown` at the first Ctrl-C (SIGINT) or SIGTERM — what
/// systemd, Docker and Kubernetes send to stop a service: either way the
/// pages in flight are finished and committed before the process exits.
async fn cancel_on_signal(shutdown: CancellationToken) {
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops cleanly");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let signal = tokio::select! {
        () = interrupt => "SIGINT",
        () = terminate => "SIGTERM",
    };
    tracing::info!(signal, "shutting down: finishing the pages in flight");
    shutdown.cancel();
}

/// Runs a parsed command line.
pub async fn main(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        Command::Run {
            config,
            once,
            profile,
        } => {
            let shutdown = CancellationToken::new();
            tokio::spawn(cancel_on_signal(shutdown.clone()));
            let cpu_before = crate::profile::process_cpu();
            let options = RunOptions { once, profile };
            let results = pipeline::run_file(&config, shutdown, options).await?;
            let process = crate::profile::process_cpu().saturating_sub(cpu_before);
            for (name, stats) in results {
                let mut line = serde_json::json!({"pipeline": name, "stats": stats});
                if profile {
                    // `other` is the process's: exact for a config of one pipeline.
                    let figures = stats.cpu.per_million_rows(stats.rows, process);
                    line["cpu_seconds_per_million_rows"] = serde_json::to_value(figures)?;
                }
                println!("{line}");
            }
        }
        Command::Validate { config } => match config::load(&config) {
            Ok(_) => println!("{}: ok", config.display()),
            Err(e) => {
                eprintln!("{}: not valid\n{e}", config.display());
                return Ok(ExitCode::FAILURE);
            }
        },
        Command::Plugin {
            command: PluginCommand::Test(args),
        } => {
            // Plugin calls block, and a guest that writes to stdout or
            // stderr (a Rust panic message, a Python print) makes
            // wasmtime-wasi block on the runtime: never from a thread that
            // drives async tasks. The pipeline calls from its plugin threads.
            return tokio::task::spawn_blocking(move || plugin_test::run(args)).await?;
        }
        Command::Offsets { command } => offsets(command)?,
        Command::Status { config, json } => status::run(&load(&config)?, json)?,
        Command::Dlq { command } => return dlq(command).await,
        Command::Sample { db, rows } => {
            let now = Timestamp::now();
            crate::bench::sample::create_orders(
                &db,
                rows,
                now.minus(std::time::Duration::from_secs(3600)),
                now,
            )?;
            println!("{}: {rows} orders added", db.display());
        }
        Command::Bench(args) => crate::bench::run(args).await?,
    }
    Ok(ExitCode::SUCCESS)
}

/// `freshet offsets show|reset`.
fn offsets(command: OffsetsCommand) -> anyhow::Result<()> {
    match command {
        OffsetsCommand::Show { config } => {
            let config = load(&config)?;
            let state = crate::state::open(&config.state)?.store;
            let stored = state.offsets()?;
            for name in config.pipelines.keys() {
                let line = match stored.iter().find(|o| &o.pipeline == name) {
                    Some(o) => {
                        serde_json::json!({"pipeline": name, "cursor": o.cursor.to_string(), "ts": o.cursor.ts.rfc3339(), "key": o.cursor.key, "updated_ms": o.updated_ms})
                    }
                    None => serde_json::json!({"pipeline": name, "cursor": null}),
                };
                println!("{line}");
            }
        }
        OffsetsCommand::Reset {
            config,
            pipeline,
            to,
        } => {
            let config = load(&config)?;
            if !config.pipelines.contains_key(&pipeline) {
                bail!("the config has no pipeline `{pipeline}`");
            }
            let state = crate::state::open(&config.state)?.store;
            let cursor = to
                .as_deref()
                .map(parse_instant)
                .transpose()?
                .map(Cursor::before);
            state.reset_offset(&pipeline, cursor.as_ref())?;
            match cursor {
                Some(c) => println!("{pipeline}: offset set to {c}"),
                None => {
                    println!("{pipeline}: offset forgotten; the next start uses timestamp.initial")
                }
            }
        }
    }
    Ok(())
}

/// `freshet dlq list|replay`; exit 1 when a replay failed again.
async fn dlq(command: DlqCommand) -> anyhow::Result<ExitCode> {
    match command {
        DlqCommand::List { config, pipeline } => {
            let config = load(&config)?;
            let state = crate::state::open(&config.state)?.store;
            for letter in state.dead_letters(pipeline.as_deref())? {
                println!("{}", serde_json::to_string(&letter)?);
            }
        }
        DlqCommand::Replay {
            config,
            pipeline,
            ids,
        } => {
            let config = load(&config)?;
            let replayed = crate::pipeline::replay(&config, pipeline.as_deref(), &ids).await?;
            for r in &replayed {
                println!("{}", serde_json::to_string(r)?);
            }
            if replayed.iter().any(crate::pipeline::Replayed::failed) {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
