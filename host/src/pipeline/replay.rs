//! `freshet dlq replay`: sends dead letters again once their cause is fixed
//! (a schema corrected in AEP, a webhook back up, a template repaired).
//!
//! - An event AEP refused is resent as the exact envelope it was.
//! - An action is executed again through the pipeline's target, with its
//!   original idempotency key, recorded in the ledger before and after.
//! - A row the plugin could not map (or an event it could not decide on)
//!   is not replayed here: the plugin must see the row again, which
//!   `freshet offsets reset --to` does after the plugin is fixed.
//!
//! A dead letter that succeeds is removed; one that fails again stays, with
//! the new reason.

use super::build::build_sink;
use crate::actions::{action_from_json, ActionRequest, ActionResult, Executors};
use crate::config::Config;
use crate::deliver::{Delivery, Message};
use crate::state::sqlite::SqliteState;
use crate::state::{ActionOutcome, DeadKind, DeadLetter, Settled, StateStore as _};
use anyhow::anyhow;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

/// What happened to one dead letter.
#[derive(Debug, Clone, Serialize)]
pub struct Replayed {
    /// The dead letter's id.
    pub id: i64,
    /// Its pipeline.
    pub pipeline: String,
    /// `delivered`, `done`, `failed` or `skipped`.
    pub result: &'static str,
    /// The outcome code (`http_200`, `http_400`, ...).
    pub code: String,
    /// Why it failed or was skipped.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

/// Replays the dead letters of `pipeline` (every pipeline when `None`),
/// only those in `ids` when it is not empty.
pub async fn replay(
    config: &Config,
    pipeline: Option<&str>,
    ids: &[i64],
) -> anyhow::Result<Vec<Replayed>> {
    if let Some(name) = pipeline {
        if !config.pipelines.contains_key(name) {
            anyhow::bail!("no pipeline `{name}` in the config");
        }
    }
    let state = SqliteState::open(&config.state.path)?;
    let letters: Vec<DeadLetter> = state
        .dead_letters(pipeline)?
        .into_iter()
        .filter(|d| ids.is_empty() || ids.contains(&d.id))
        .collect();
    if let Some(missing) = ids.iter().find(|id| !letters.iter().any(|d| d.id == **id)) {
        anyhow::bail!(
            "no dead letter {missing}{}",
            pipeline
                .map(|p| format!(" in pipeline `{p}`"))
                .unwrap_or_default()
        );
    }
    let shutdown = CancellationToken::new();
    let mut out = Vec::new();
    for (name, pipeline) in &config.pipelines {
        let mine: Vec<&DeadLetter> = letters.iter().filter(|d| &d.pipeline == name).collect();
        if mine.is_empty() {
            continue;
        }
        let prefix = format!("pipelines.{name}");
        let (sink, _) = build_sink(&pipeline.deliver, &prefix, &shutdown)?;
        let executors = Executors::build(&pipeline.targets, &prefix)?;
        for letter in mine {
            let (settled, replayed) = match replay_one(letter, sink.as_ref(), &executors, &state)
                .await?
            {
                Some(result) => result,
                None => {
                    out.push(Replayed {
                        id: letter.id,
                        pipeline: name.clone(),
                        result: "skipped",
                        code: letter.code.clone(),
                        reason: "the plugin must see this row again: fix it, then `freshet offsets reset --to` before the row".into(),
                    });
                    continue;
                }
            };
            state.settle_dead_letter(letter.id, &settled)?;
            out.push(Replayed {
                id: letter.id,
                pipeline: name.clone(),
                ..replayed
            });
        }
    }
    Ok(out)
}

/// Replays one letter; `None` when it cannot be replayed here.
async fn replay_one(
    letter: &DeadLetter,
    sink: &dyn crate::deliver::Sink,
    executors: &Executors,
    state: &SqliteState,
) -> anyhow::Result<Option<(Settled, Replayed)>> {
    let payload: serde_json::Value = serde_json::from_str(&letter.payload)
        .map_err(|e| anyhow!("dead letter {}: unreadable payload: {e}", letter.id))?;
    let result = |result, code: String, reason: String| Replayed {
        id: letter.id,
        pipeline: String::new(),
        result,
        code,
        reason,
    };
    Ok(Some(match letter.kind {
        // An envelope AEP refused (a plugin's failed decision is not one).
        DeadKind::Event if payload.get("header").is_some() => {
            let message = Message {
                identity: letter.identity.clone(),
                json: letter.payload.clone(),
            };
            match sink.deliver(std::slice::from_ref(&message)).await?.pop() {
                Some(Delivery::Delivered) => (
                    Settled::Done(None),
                    result("delivered", "delivered".into(), String::new()),
                ),
                Some(Delivery::Rejected { code, reason }) => (
                    Settled::Failed {
                        code: code.clone(),
                        reason: reason.clone(),
                    },
                    result("failed", code, reason),
                ),
                None => anyhow::bail!(
                    "the destination answered nothing for dead letter {}",
                    letter.id
                ),
            }
        }
        DeadKind::Action => {
            let key = payload["idempotency_key"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let action = action_from_json(&payload["action"]).ok_or_else(|| {
                anyhow!(
                    "dead letter {}: not an action: {}",
                    letter.id,
                    letter.payload
                )
            })?;
            state.begin_actions(&letter.pipeline, std::slice::from_ref(&key))?;
            let request = ActionRequest {
                key: key.clone(),
                identity: letter.identity.clone(),
                action,
            };
            let done = executors.execute(&request).await;
            executors.sync()?;
            match done {
                ActionResult::Done(outcome) => (
                    Settled::Done(Some(ActionOutcome {
                        key,
                        outcome: outcome.clone(),
                    })),
                    result("done", outcome, String::new()),
                ),
                ActionResult::Failed { outcome, reason } => (
                    Settled::Failed {
                        code: outcome.clone(),
                        reason: reason.clone(),
                    },
                    result("failed", outcome, reason),
                ),
            }
        }
        DeadKind::Row | DeadKind::Event => return Ok(None),
    }))
}
