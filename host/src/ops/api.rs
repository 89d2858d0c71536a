//! The admin API's pipeline endpoints: list and inspect pipelines, pause
//! and resume them, reset an offset (paused only), list and replay dead
//! letters — the same code paths as the CLI's `offsets` and `dlq`. A tenant
//! caller sees its own pipelines only; another tenant's answer 404, as if
//! they did not exist.

use super::auth::Caller;
use super::control::{Phase, PipelineControl};
use super::problem::{json_body, Problem};
use super::Shared;
use crate::source::{Cursor, Timestamp};
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

pub(super) fn routes() -> Router<Shared> {
    Router::new()
        .route("/openapi.json", get(openapi))
        .route("/pipelines", get(list))
        .route("/pipelines/{name}", get(one))
        .route("/pipelines/{name}/pause", post(pause))
        .route("/pipelines/{name}/resume", post(resume))
        .route("/pipelines/{name}/offset", put(reset_offset))
        .route("/pipelines/{name}/dead-letters", get(dead_letters))
        .route("/pipelines/{name}/dead-letters/replay", post(replay))
}

impl FromRequestParts<Shared> for Caller {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, admin: &Shared) -> Result<Self, Problem> {
        admin.tokens.caller(&parts.headers)
    }
}

/// The OpenAPI description is public, like the status page's shell: it
/// says what exists, never what a tenant has.
async fn openapi() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        include_str!("openapi.json"),
    )
        .into_response()
}

impl super::AdminState {
    /// The pipeline `name`, if the caller may see it.
    pub(super) fn pipeline(
        &self,
        caller: &Caller,
        name: &str,
    ) -> Result<&Arc<PipelineControl>, Problem> {
        self.pipelines
            .get(name)
            .filter(|p| caller.may(&p.tenant))
            .ok_or_else(|| Problem::not_found(format!("no pipeline `{name}`")))
    }
}

/// A pipeline as the API shows it.
fn view(p: &PipelineControl) -> Value {
    let status = p.status();
    json!({
        "name": &*p.name,
        "tenant": &*p.tenant,
        "phase": status.phase,
        "error": status.error,
        "cursor": status.cursor,
        "lag_seconds": status.lag_seconds,
        "lag_rows": status.lag_rows,
        "last_commit_ms": status.last_commit_ms,
        "plugin": {"version": p.version(), "pinned": p.pinned()},
        "stats": status.stats,
    })
}

async fn list(State(admin): State<Shared>, caller: Caller) -> Json<Value> {
    let pipelines: Vec<Value> = admin
        .pipelines
        .values()
        .filter(|p| caller.may(&p.tenant))
        .map(|p| view(p))
        .collect();
    Json(json!({ "pipelines": pipelines }))
}

async fn one(
    State(admin): State<Shared>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Value>, Problem> {
    let p = admin.pipeline(&caller, &name)?;
    Ok(Json(view(p)))
}

/// Asks the pipeline to pause: it finishes and commits the pages in flight,
/// then reads nothing until resumed. 202: the pause is under way (`phase`
/// says when it is `paused`).
async fn pause(
    State(admin): State<Shared>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Response, Problem> {
    let p = admin.pipeline(&caller, &name)?;
    let _steering = steer(p).await?;
    p.pause();
    tracing::info!(pipeline = %name, ?caller, "pause asked");
    Ok((StatusCode::ACCEPTED, Json(view(p))).into_response())
}

/// Lets a paused (or pausing) pipeline read again, from its stored offset.
async fn resume(
    State(admin): State<Shared>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Value>, Problem> {
    let p = admin.pipeline(&caller, &name)?;
    let _steering = steer(p).await?;
    if !p.resume() {
        return Err(Problem::conflict(format!(
            "pipeline `{name}` is not paused"
        )));
    }
    tracing::info!(pipeline = %name, ?caller, "resume asked");
    Ok(Json(view(p)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OffsetRequest {
    /// Restart at this instant (inclusive): RFC 3339, or epoch seconds;
    /// `null` forgets the offset (the next start uses `timestamp.initial`).
    to: Option<OffsetTarget>,
}

/// A whole number as JSON Schema's `integer` means it: `625` or `625.0`
/// (JSON does not tell them apart), within 64 bits.
#[derive(Debug, Clone, Copy)]
struct Whole(i64);

impl<'de> Deserialize<'de> for Whole {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = serde_json::Number::deserialize(d)?;
        n.as_i64()
            .or_else(|| {
                let f = n.as_f64()?;
                // i64's range as f64 rounds up to 2^63, one past i64::MAX.
                (f.fract() == 0.0 && f >= -(2f64.powi(63)) && f < 2f64.powi(63)).then_some(f as i64)
            })
            .map(Whole)
            .ok_or_else(|| {
                serde::de::Error::custom(format!("{n} is not a whole number within 64 bits"))
            })
    }
}

/// The furthest instant from the epoch a cursor holds, in whole seconds.
const MAX_EPOCH_SECONDS: u64 = i64::MAX as u64 / 1_000_000_000;

/// Where a reset offset points.
#[derive(Deserialize)]
#[serde(untagged)]
enum OffsetTarget {
    /// Epoch seconds.
    Seconds(Whole),
    Text(String),
}

/// Moves a paused pipeline's offset (`freshet offsets reset`); it reads
/// from there once resumed.
async fn reset_offset(
    State(admin): State<Shared>,
    caller: Caller,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, Problem> {
    let p = admin.pipeline(&caller, &name)?;
    let request: OffsetRequest = json_body(&body)?;
    // `to` must be there: a missing one must not read as `null` (forget).
    let given: Value = json_body(&body)?;
    if given.get("to").is_none() {
        return Err(Problem::bad_request(
            "request body: missing field `to` (an instant, or null to forget the offset)",
        )
        .field("to"));
    }
    let cursor = match request.to {
        None => None,
        Some(OffsetTarget::Seconds(Whole(seconds))) => {
            // The instants a cursor holds: nanoseconds in 64 bits.
            if seconds.unsigned_abs() > MAX_EPOCH_SECONDS {
                return Err(Problem::bad_request(format!(
                    "{seconds} epoch seconds is outside ±{MAX_EPOCH_SECONDS} (years 1677 to 2262)"
                ))
                .field("to"));
            }
            Some(Cursor::before(Timestamp(seconds * 1_000_000_000)))
        }
        Some(OffsetTarget::Text(text)) => Some(Cursor::before(text.parse().map_err(|e| {
            Problem::bad_request(format!(
                "{text:?} is neither epoch seconds nor an RFC 3339 instant: {e}"
            ))
            .field("to")
        })?)),
    };
    // Under the steering lock, a resume cannot slip in between the check
    // and the write: a paused pipeline reads its offset only once resumed.
    let _steering = steer(p).await?;
    if p.status().phase != Phase::Paused || !p.pause_asked() {
        return Err(Problem::conflict(format!(
            "pipeline `{name}` is {}: pause it and wait for `paused` first, so no page in flight commits over the new offset",
            serde_json::to_value(p.status().phase).unwrap_or_default().as_str().unwrap_or("?")
        )));
    }
    admin.state.reset_offset(&name, cursor.as_ref())?;
    let shown = match &cursor {
        Some(c) => c.to_string(),
        None => "(forgotten: timestamp.initial on resume)".to_owned(),
    };
    p.set_cursor(shown);
    tracing::info!(pipeline = %name, ?caller, cursor = ?cursor.as_ref().map(ToString::to_string), "offset reset");
    Ok(Json(view(p)))
}

async fn dead_letters(
    State(admin): State<Shared>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Value>, Problem> {
    admin.pipeline(&caller, &name)?;
    let letters = admin.state.dead_letters(Some(&name))?;
    Ok(Json(json!({ "dead_letters": letters })))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ReplayRequest {
    /// Only these dead letters; all of the pipeline's by default.
    #[serde(default)]
    ids: Vec<Whole>,
}

/// `freshet dlq replay` for one pipeline: each dead letter's outcome; 200
/// even when some failed again (each says so).
async fn replay(
    State(admin): State<Shared>,
    caller: Caller,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, Problem> {
    admin.pipeline(&caller, &name)?;
    let request: ReplayRequest = if body.is_empty() {
        ReplayRequest::default()
    } else {
        json_body(&body)?
    };
    // An id the pipeline has no dead letter under names the field.
    let stored = admin.state.dead_letters(Some(&name))?;
    if let Some(Whole(missing)) = request
        .ids
        .iter()
        .find(|id| !stored.iter().any(|d| d.id == id.0))
    {
        return Err(
            Problem::not_found(format!("pipeline `{name}` has no dead letter {missing}"))
                .field("ids"),
        );
    }
    let ids: Vec<i64> = request.ids.iter().map(|id| id.0).collect();
    let replayed = crate::pipeline::replay(&admin.config, Some(&name), &ids)
        .await
        .map_err(Problem::internal)?;
    tracing::info!(pipeline = %name, ?caller, letters = replayed.len(), "dead letters replayed");
    Ok(Json(json!({ "replayed": replayed })))
}

/// Takes the pipeline's steering lock, if this host runs it: a pipeline
/// another host holds (hosts sharing pipelines) is steered there.
pub(super) async fn steer(p: &PipelineControl) -> Result<tokio::sync::MutexGuard<'_, ()>, Problem> {
    if p.status().phase == Phase::Elsewhere {
        return Err(Problem::conflict(format!(
            "pipeline `{}` runs on another host now (`freshet status` names it): steer it there",
            p.name
        )));
    }
    Ok(p.steer().await)
}
