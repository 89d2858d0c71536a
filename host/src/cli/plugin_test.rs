//! `freshet plugin test`: a dry run of a plugin over rows from a JSON file,
//! printing the events and actions of each row and what it used against the
//! limits. Nothing outside the sandbox is touched.
//!
//! The rows file is a JSON array of objects, one per row, keyed by column.
//! JSON null, booleans, integers, floats and strings map to the matching
//! values; other types are written as a one-key object:
//! `{"timestamp": "2025-01-01T00:00:00Z"}`, `{"decimal": "12.50"}`,
//! `{"date": "2025-01-01"}`, `{"json": {...}}`, `{"binary": "hex"}`.
//! The key `_identity` sets the row's identity (default `row-N`).

use crate::actions::action_json;
use crate::plugin::contract::{Row, Value};
use crate::plugin::{CallContext, EngineSettings, Limits, Runtime, Sandbox};
use crate::source::Timestamp;
use anyhow::{anyhow, bail, Context as _};
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

/// Parses one typed cell.
fn cell(column: &str, v: &Json) -> anyhow::Result<Value> {
    Ok(match v {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Boolean(*b),
        Json::Number(n) => match n.as_i64() {
            Some(i) => Value::Integer(i),
            None => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Json::String(s) => Value::Text(s.clone()),
        Json::Object(o) if o.len() == 1 => {
            let (kind, inner) = o.iter().next().ok_or_else(|| anyhow!("empty object"))?;
            let text = || {
                inner
                    .as_str()
                    .ok_or_else(|| anyhow!("column `{column}`: `{kind}` takes a string"))
            };
            match kind.as_str() {
                "timestamp" => {
                    let t = chrono::DateTime::parse_from_rfc3339(text()?)
                        .with_context(|| format!("column `{column}`: not an RFC 3339 instant"))?;
                    Value::Timestamp(Timestamp::from_chrono(t.to_utc()).instant())
                }
                "decimal" => Value::Decimal(text()?.to_owned()),
                "date" => {
                    let d = chrono::NaiveDate::parse_from_str(text()?, "%Y-%m-%d")
                        .with_context(|| format!("column `{column}`: not a YYYY-MM-DD date"))?;
                    let days = d
                        .signed_duration_since(chrono::NaiveDate::default())
                        .num_days();
                    Value::Date(i32::try_from(days)?)
                }
                "json" => Value::Json(inner.to_string()),
                "binary" => Value::Binary(
                    hex::decode(text()?).with_context(|| format!("column `{column}`: not hex"))?,
                ),
                _ => Value::Json(v.to_string()),
            }
        }
        other => Value::Json(other.to_string()),
    })
}

/// Reads the rows file into columns and rows.
fn read_rows(path: &std::path::Path) -> anyhow::Result<(Vec<String>, Vec<Row>)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let objects: Vec<serde_json::Map<String, Json>> = serde_json::from_str(&text)
        .with_context(|| format!("{}: expected a JSON array of objects", path.display()))?;
    let mut columns: Vec<String> = Vec::new();
    for object in &objects {
        for key in object.keys().filter(|k| *k != "_identity") {
            if !columns.contains(key) {
                columns.push(key.clone());
            }
        }
    }
    let mut rows = Vec::with_capacity(objects.len());
    for (n, object) in objects.iter().enumerate() {
        let identity = match object.get("_identity") {
            Some(Json::String(s)) => s.clone(),
            Some(other) => other.to_string(),
            None => format!("row-{n}"),
        };
        let cells = columns
            .iter()
            .map(|c| object.get(c).map_or(Ok(Value::Null), |v| cell(c, v)))
            .collect::<anyhow::Result<Vec<_>>>()
            .with_context(|| format!("{}: row {n}", path.display()))?;
        rows.push(Row { identity, cells });
    }
    Ok((columns, rows))
}

/// Runs the dry run; exit code 1 when any row failed.
pub fn run(args: TestArgs) -> anyhow::Result<ExitCode> {
    let (limits, mut settings, grants, mut engine) = match (&args.config, &args.pipeline) {
        (Some(path), Some(name)) => {
            let config =
                crate::config::load(path).map_err(|e| anyhow!("{}: {e}", path.display()))?;
            let p = config
                .pipelines
                .get(name)
                .ok_or_else(|| anyhow!("the config has no pipeline `{name}`"))?;
            let engine = config.engine.clone();
            (
                p.limits.clone(),
                p.plugin_settings.clone(),
                p.grants,
                engine,
            )
        }
        _ => (
            Limits::default(),
            BTreeMap::new(),
            Default::default(),
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
    let (columns, rows) = read_rows(&args.rows)?;
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
    let mut failed = 0;
    for (n, row) in rows.iter().enumerate() {
        let (result, usage) = sandbox.probe(&columns, row);
        let usage = json!({
            "fuel": usage.fuel, "fuel_limit": limits.fuel_per_row,
            "peak_memory_bytes": usage.peak_memory, "memory_limit_bytes": limits.memory_bytes(),
        });
        let report = match result {
            Ok((events, actions)) => {
                let events_json: Vec<Json> = events
                    .iter()
                    .map(|e| {
                        json!({
                            "_id": e.id,
                            "timestamp": Timestamp::from_instant(e.timestamp).rfc3339(),
                            "body": serde_json::from_str::<Json>(&e.body).unwrap_or(Json::Null),
                        })
                    })
                    .collect();
                let actions_json: Vec<Json> = actions
                    .iter()
                    .map(|a| match a {
                        Ok(list) => Json::Array(list.iter().map(action_json).collect()),
                        Err(e) => {
                            failed += 1;
                            json!({"error": {"code": e.code(), "message": e.to_string()}})
                        }
                    })
                    .collect();
                json!({"row": n, "identity": row.identity, "events": events_json, "actions": actions_json, "usage": usage})
            }
            Err(e) => {
                failed += 1;
                json!({"row": n, "identity": row.identity, "error": {"code": e.code(), "message": e.to_string()}, "usage": usage})
            }
        };
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    eprintln!("{} rows, {failed} failed (plugin {})", rows.len(), version);
    Ok(if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
