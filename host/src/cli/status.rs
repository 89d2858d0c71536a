//! `freshet status`: each pipeline of a config with the host holding it,
//! its lease and epoch, and how far its offset is behind now — read from
//! the state store, so it works from any machine that reaches it.

use crate::config::Config;
use crate::source::Timestamp;
use crate::state::{LeaseRow, StoredOffset};
use serde::Serialize;

/// One pipeline's line.
#[derive(Debug, Serialize)]
pub struct Line {
    /// The pipeline.
    pub pipeline: String,
    /// The host holding its lease (`None`: free, or one host runs all).
    pub owner: Option<String>,
    /// Its lease's epoch (0: never claimed).
    pub epoch: i64,
    /// Milliseconds its lease has left, on the database's clock (negative:
    /// it ran out and waits to be claimed).
    pub lease_ms: Option<i64>,
    /// Seconds from its offset's timestamp to now (`None`: no offset yet).
    pub lag_seconds: Option<f64>,
    /// Its offset.
    pub cursor: Option<String>,
}

/// The lines, in the config's order.
pub fn lines(config: &Config, offsets: &[StoredOffset], leases: &[LeaseRow]) -> Vec<Line> {
    let now = Timestamp::now();
    config
        .pipelines
        .keys()
        .map(|name| {
            let offset = offsets.iter().find(|o| &o.pipeline == name);
            let lease = leases.iter().find(|l| &l.pipeline == name);
            Line {
                pipeline: name.clone(),
                owner: lease.and_then(|l| l.owner.clone()),
                epoch: lease.map_or(0, |l| l.epoch),
                lease_ms: lease.filter(|l| l.owner.is_some()).map(|l| l.remaining_ms),
                lag_seconds: offset
                    .map(|o| now.0.saturating_sub(o.cursor.ts.0).max(0) as f64 / 1e9),
                cursor: offset.map(|o| o.cursor.to_string()),
            }
        })
        .collect()
}

/// Prints the lines as a table (or, `json`, one JSON object per line).
pub fn run(config: &Config, json: bool) -> anyhow::Result<()> {
    let state = crate::state::open(&config.state)?.store;
    let lines = lines(config, &state.offsets()?, &state.leases()?);
    if json {
        for line in &lines {
            println!("{}", serde_json::to_string(line)?);
        }
        return Ok(());
    }
    let rows: Vec<[String; 6]> = lines
        .iter()
        .map(|l| {
            [
                l.pipeline.clone(),
                l.owner.clone().unwrap_or_else(|| "-".into()),
                l.epoch.to_string(),
                match l.lease_ms {
                    Some(ms) if ms >= 0 => format!("{:.1}s left", ms as f64 / 1e3),
                    Some(_) => "ran out".into(),
                    None => "-".into(),
                },
                l.lag_seconds
                    .map_or_else(|| "-".into(), |s| format!("{s:.1}s")),
                l.cursor.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    let header = ["PIPELINE", "OWNER", "EPOCH", "LEASE", "LAG", "CURSOR"].map(String::from);
    let mut widths = [0usize; 6];
    for row in std::iter::once(&header).chain(&rows) {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in std::iter::once(&header).chain(&rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        println!("{}", cells.join("  ").trim_end());
    }
    Ok(())
}
