//! `freshet dlq replay`: sends dead letters again once their cause is fixed
//! (a schema corrected in AEP, a webhook back up, a template repaired).
//!
//! - An event AEP refused is resent as the exact envelope it was; once
//!   delivered, the actions the plugin decided for it run, with their
//!   original idempotency keys, through the same ledger as a page's
//!   ([`super::ledger`]): exactly once, however often the replay runs.
//! - An action is executed again through the pipeline's target, with its
//!   original idempotency key.
//! - A row the plugin could not map (or an event it could not decide on)
//!   is not replayed here: the plugin must see the row again, which
//!   `freshet offsets reset --to` does after the plugin is fixed.
//!
//! A dead letter that succeeds is removed, in the transaction that records
//! what its replay did; one that fails again stays, with the new reason.

use super::build::build_sink;
use super::ledger::{self, Rerun};
use super::work::{ActionState, ActionWork};
use super::Stats;
use crate::actions::{ActionResult, Executors};
use crate::config::Config;
use crate::deliver::{Delivery, Message, Sink};
use crate::secrets::Secrets;
use crate::state::{ActionOutcome, Commit, DeadLetter, Letter, Settled, StateStore};
use serde::Serialize;
use std::sync::Arc;
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
    /// For a delivered event: what became of its actions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actions: Option<ActionCounts>,
}

impl Replayed {
    /// Whether anything failed again (the letter, or an action it ran).
    pub fn failed(&self) -> bool {
        self.result == "failed" || self.actions.is_some_and(|a| a.failed > 0)
    }
}

/// The actions a replayed event ran.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ActionCounts {
    /// Done now.
    pub done: u64,
    /// Failed again: each a new dead letter, under its original key.
    pub failed: u64,
    /// Already done before (the ledger had them finished).
    pub skipped: u64,
}

/// What replaying needs of one pipeline.
struct Target<'a> {
    pipeline: &'a str,
    sink: Box<dyn Sink>,
    executors: Executors,
    state: &'a Arc<dyn StateStore>,
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
    let state: Arc<dyn StateStore> = crate::state::open(&config.state)?.store;
    let letters: Vec<DeadLetter> = state
        .dead_letters(pipeline)?
        .into_iter()
        .filter(|d| ids.is_empty() || ids.contains(&d.id))
        .collect();
    if let Some(missing) = ids.iter().find(|id| !letters.iter().any(|d| d.id == **id)) {
        let within = pipeline.map(|p| format!(" in pipeline `{p}`"));
        anyhow::bail!("no dead letter {missing}{}", within.unwrap_or_default());
    }
    let shutdown = CancellationToken::new();
    let mut out = Vec::new();
    for (name, pipeline) in &config.pipelines {
        let mine: Vec<&DeadLetter> = letters.iter().filter(|d| &d.pipeline == name).collect();
        if mine.is_empty() {
            continue;
        }
        let prefix = format!("pipelines.{name}");
        let secrets = Secrets::of(config, pipeline);
        let target = Target {
            pipeline: name,
            sink: build_sink(&pipeline.deliver, &prefix, &secrets, &shutdown)?.0,
            executors: Executors::build(&pipeline.targets, &prefix, &secrets)?,
            state: &state,
        };
        for letter in mine {
            out.push(target.replay(letter).await?);
        }
    }
    Ok(out)
}

impl Target<'_> {
    /// Replays one letter and settles it in the state store.
    async fn replay(&self, letter: &DeadLetter) -> anyhow::Result<Replayed> {
        let mut replayed = Replayed {
            id: letter.id,
            pipeline: self.pipeline.to_owned(),
            result: "skipped",
            code: letter.code.clone(),
            reason: String::new(),
            actions: None,
        };
        let settled = match &letter.letter {
            Letter::Row(_) | Letter::Undecided(_) => {
                replayed.reason = "the plugin must see this row again: fix it, then `freshet offsets reset --to` before the row".into();
                return Ok(replayed);
            }
            Letter::Refused(refused) => {
                let message = Message {
                    json: refused.envelope.get().to_owned(),
                };
                match self
                    .sink
                    .deliver(std::slice::from_ref(&message))
                    .await?
                    .pop()
                {
                    Some(Delivery::Delivered) => {
                        let actions: Vec<ActionWork> = (refused.actions.iter())
                            .map(|a| ActionWork::stored(&letter.identity, a))
                            .collect();
                        let (left, counts) = self.run_actions(actions).await?;
                        (replayed.result, replayed.code) = ("delivered", "delivered".into());
                        replayed.actions = Some(counts);
                        Settled::Done(left)
                    }
                    Some(Delivery::Rejected { code, reason }) => {
                        failed(&mut replayed, code, reason)
                    }
                    None => anyhow::bail!(
                        "the destination answered nothing for dead letter {}",
                        letter.id
                    ),
                }
            }
            Letter::Action(keyed) => {
                let mut action = ActionWork::stored(&letter.identity, keyed);
                let rerun = Rerun::Failed;
                ledger::run(
                    self.state,
                    self.pipeline,
                    &self.executors,
                    vec![&mut action],
                    rerun,
                )
                .await?;
                match action.state {
                    ActionState::Ran(ActionResult::Failed { outcome, reason }) => {
                        failed(&mut replayed, outcome, reason)
                    }
                    ActionState::Ran(ActionResult::Done(outcome)) => {
                        (replayed.result, replayed.code) = ("done", outcome.clone());
                        Settled::Done(Commit {
                            actions: vec![ActionOutcome {
                                key: keyed.key.clone(),
                                outcome,
                                done: true,
                            }],
                            ..Commit::default()
                        })
                    }
                    ActionState::Skipped | ActionState::Pending => {
                        (replayed.result, replayed.code) = ("done", "already_done".into());
                        Settled::Done(Commit::default())
                    }
                }
            }
        };
        let state = self.state.clone();
        let (pipeline, id) = (self.pipeline.to_owned(), letter.id);
        tokio::task::spawn_blocking(move || state.settle_dead_letter(&pipeline, id, &settled))
            .await??;
        Ok(replayed)
    }

    /// Runs a delivered event's actions through the ledger: what they leave
    /// to commit (outcomes, dead letters of those that failed) and counts.
    async fn run_actions(
        &self,
        mut actions: Vec<ActionWork>,
    ) -> anyhow::Result<(Commit, ActionCounts)> {
        let actions_mut = actions.iter_mut().collect();
        ledger::run(
            self.state,
            self.pipeline,
            &self.executors,
            actions_mut,
            Rerun::Failed,
        )
        .await?;
        let (mut left, mut stats) = (Commit::default(), Stats::default());
        for action in actions {
            action.settle(&mut left, &mut stats)?;
        }
        let failed = left.dead_letters.len() as u64;
        let counts = ActionCounts {
            done: stats.actions - failed,
            failed,
            skipped: stats.actions_skipped,
        };
        Ok((left, counts))
    }
}

/// The letter failed again: it stays, with the new code and reason.
fn failed(replayed: &mut Replayed, code: String, reason: String) -> Settled {
    replayed.result = "failed";
    replayed.code = code.clone();
    replayed.reason = reason.clone();
    Settled::Failed { code, reason }
}
