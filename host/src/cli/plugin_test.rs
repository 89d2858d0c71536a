//! `freshet plugin test`: a dry run of a plugin over rows from a JSON file
//! (the format is [`crate::plugin::rows_file`]'s), printing the events and
//! actions of each row and what it used against the limits. Nothing outside
//! the sandbox is touched.

use crate::actions::action_json;
use crate::plugin::contract::Row;
use crate::plugin::{CallContext, EngineSettings, Grants, Limits, PluginError, Runtime, Sandbox};
use crate::source::Timestamp;
use anyhow::{anyhow, bail};
use serde_json::{json, Value as Json};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `freshet plugin test`.
#[derive(Debug, clap::Args)]
pub struct TestArgs {
    /// The plugin component.
    #[arg(long)]
    plugin: PathBuf,
    /// The rows file (JSON array of objects).
    #[arg(long)]
    rows: PathBuf,
    /// Take limits and plugin settings from this config's pipeline...
    #[arg(long, requires = "pipeline")]
    config: Option<PathBuf>,
    /// ...named here.
    #[arg(long)]
    pipeline: Option<String>,
    /// A plugin setting `NAME=VALUE` (repeatable; overrides the config's).
    #[arg(long = "setting")]
    settings: Vec<String>,
}

/// What the calls run with: the config pipeline's limits, settings and
/// grants (or the defaults), and the engine settings with a component cache.
fn context_of(
    args: &TestArgs,
) -> anyhow::Result<(Limits, BTreeMap<String, String>, Grants, EngineSettings)> {
    let (limits, mut settings, grants, mut engine) = match (&args.config, &args.pipeline) {
        (Some(path), Some(name)) => {
            let config =
                crate::config::load(path).map_err(|e| anyhow!("{}: {e}", path.display()))?;
            let p = config
                .pipelines
                .get(name)
                .ok_or_else(|| anyhow!("the config has no pipeline `{name}`"))?;
            (
                p.limits.clone(),
                p.plugin_settings.clone(),
                p.grants,
                config.engine.clone(),
            )
        }
        _ => (
            Limits::default(),
            BTreeMap::new(),
            Grants::default(),
            EngineSettings::default(),
        ),
    };
    // Large components (Python, JavaScript) take seconds to compile: try
    // them again and again from a cache, the config's or the user's.
    if engine.cache_dir.is_none() {
        engine.cache_dir = std::env::var_os("HOME")
            .map(|home| std::path::Path::new(&home).join(".cache/freshet/components"));
    }
    for setting in &args.settings {
        let Some((k, v)) = setting.split_once('=') else {
            bail!("--setting {setting:?}: expected NAME=VALUE")
        };
        settings.insert(k.to_owned(), v.to_owned());
    }
    Ok((limits, settings, grants, engine))
}

/// Runs the dry run; exit code 1 when any row failed.
pub fn run(args: TestArgs) -> anyhow::Result<ExitCode> {
    let (limits, settings, grants, engine) = context_of(&args)?;
    let (columns, rows) = crate::plugin::rows_file::read(&args.rows)?;
    let runtime = Runtime::new(&engine)?;
    let plugin = runtime.load(&args.plugin)?;
    let version = plugin.version()[..12].to_owned();
    let ctx = CallContext::new(
        "plugin-test",
        "plugin-test",
        limits.clone(),
        settings,
        grants,
    );
    let sandbox = Sandbox::new(plugin, ctx);
    let reports = dry_run(&sandbox, &columns, &rows);
    for report in &reports {
        println!("{}", serde_json::to_string_pretty(report)?);
    }
    let failed = reports.iter().filter(|r| failed(r)).count();
    eprintln!("{} rows, {failed} failed (plugin {})", rows.len(), version);
    Ok(if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Whether a row's report says the plugin failed on it (or on one of its
/// events' decisions).
pub fn failed(report: &Json) -> bool {
    report.get("error").is_some()
        || report["actions"]
            .as_array()
            .is_some_and(|a| a.iter().any(|a| a.get("error").is_some()))
}

/// Runs each row through `sandbox` alone and reports its events, actions
/// (or errors) and what it used against the limits: the dry run of
/// `freshet plugin test` and of the admin API's test endpoint. Blocks (a
/// plugin call): never on a thread that drives async tasks.
pub fn dry_run(sandbox: &Sandbox, columns: &[String], rows: &[Row]) -> Vec<Json> {
    let limits = &sandbox.context().limits;
    rows.iter()
        .enumerate()
        .map(|(n, row)| {
            let (result, usage) = sandbox.probe(columns, row);
            let (map_fuel, map_limit) = usage.map.unwrap_or_default();
            let micros = |d: std::time::Duration| (d.as_nanos() as f64 / 100.0).round() / 10.0;
            let time = usage.timing.map(|t| {
                json!({"guest_us": micros(t.guest), "boundary_us": micros(t.boundary), "host_us": micros(t.host)})
            });
            let usage = json!({
                "fuel": usage.fuel, "fuel_limit": usage.budget,
                "map_fuel": map_fuel, "map_fuel_limit": map_limit,
                "peak_memory_bytes": usage.peak_memory, "memory_limit_bytes": limits.memory_bytes(),
                "time": time,
            });
            let error = |e: &PluginError| json!({"code": e.code(), "message": e.to_string()});
            match result {
                Ok((events, actions)) => {
                    let actions: Vec<Json> = actions
                        .iter()
                        .map(|a| match a {
                            Ok(list) => Json::Array(list.iter().map(action_json).collect()),
                            Err(e) => json!({ "error": error(e) }),
                        })
                        .collect();
                    let events: Vec<Json> = events.iter().map(event_json).collect();
                    json!({"row": n, "identity": row.identity, "events": events, "actions": actions, "usage": usage})
                }
                Err(e) => {
                    json!({"row": n, "identity": row.identity, "error": error(&e), "usage": usage})
                }
            }
        })
        .collect()
}

/// An event as the report shows it.
fn event_json(e: &crate::plugin::contract::Event) -> Json {
    json!({
        "_id": e.id,
        "timestamp": Timestamp::from_instant(e.timestamp).rfc3339(),
        "body": serde_json::from_str::<Json>(&e.body).unwrap_or(Json::Null),
    })
}
