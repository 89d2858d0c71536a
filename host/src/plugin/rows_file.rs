//! Rows written as JSON, for `freshet plugin test` and for fixtures shared
//! by every language's plugin (the conformance tests).
//!
//! A rows file is a JSON array of objects, one per row, keyed by column.
//! JSON null, booleans, integers (that fit in 64 bits), other numbers and
//! strings map to null, boolean, integer, float and text; other types are
//! written as a one-key object: `{"timestamp": "2025-01-01T00:00:00Z"}`,
//! `{"decimal": "12.50"}`, `{"date": "2025-01-01"}`, `{"json": {...}}`,
//! `{"binary": "hex"}`. The key `_identity` sets the row's identity (default
//! `row-N`); a column missing from a row is null there.

use super::contract::{Row, Value};
use crate::source::Timestamp;
use anyhow::{anyhow, Context as _};
use serde_json::Value as Json;
use std::path::Path;

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
                    let t: Timestamp = text()?
                        .parse()
                        .with_context(|| format!("column `{column}`: not an RFC 3339 instant"))?;
                    Value::Timestamp(t.instant())
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
pub fn read(path: &Path) -> anyhow::Result<(Vec<String>, Vec<Row>)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse(&text).with_context(|| path.display().to_string())
}

/// Parses rows-file text into columns and rows.
pub fn parse(text: &str) -> anyhow::Result<(Vec<String>, Vec<Row>)> {
    let objects: Vec<serde_json::Map<String, Json>> =
        serde_json::from_str(text).context("expected a JSON array of objects")?;
    from_objects(objects)
}

/// [`parse`] of a JSON value already read (the admin API's dry run).
pub fn from_json(value: Json) -> anyhow::Result<(Vec<String>, Vec<Row>)> {
    let objects: Vec<serde_json::Map<String, Json>> =
        serde_json::from_value(value).context("expected a JSON array of objects")?;
    from_objects(objects)
}

fn from_objects(
    objects: Vec<serde_json::Map<String, Json>>,
) -> anyhow::Result<(Vec<String>, Vec<Row>)> {
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
            .with_context(|| format!("row {n}"))?;
        rows.push(Row { identity, cells });
    }
    Ok((columns, rows))
}
