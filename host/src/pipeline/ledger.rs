//! The one way actions run, for a page and for `dlq replay` alike: skip
//! what the ledger has finished, mark the rest started before they run (so
//! the ledger shows an action that started and never finished), run them
//! with bounded concurrency, make record targets durable. Their outcomes
//! reach the ledger with the caller's commit ([`super::work::ActionWork::settle`]).

use super::work::{ActionState, ActionWork};
use crate::actions::{ActionResult, Executors};
use crate::profile::Stage;
use crate::state::StateStore;
use futures::stream::{self, StreamExt as _};
use std::sync::Arc;

/// Actions of one page run at once, at most.
const ACTION_CONCURRENCY: usize = 32;

/// Which finished actions run again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rerun {
    /// None: a page read again skips what is done and what failed for good
    /// (that waits in dead letters).
    Nothing,
    /// Those that failed for good: `dlq replay`, asked to try them again.
    Failed,
}

/// Runs `actions` of `pipeline` that the ledger has not finished (or, with
/// [`Rerun::Failed`], finished by failing), filling each one's state. Fails
/// (nothing recorded as finished) only if the state store or a record
/// target's file fails.
pub(crate) async fn run(
    state: &Arc<dyn StateStore>,
    pipeline: &str,
    executors: &Executors,
    actions: Vec<&mut ActionWork>,
    rerun: Rerun,
) -> anyhow::Result<()> {
    if actions.is_empty() {
        return Ok(());
    }
    let keys: Vec<String> = actions.iter().map(|a| a.request.key.clone()).collect();
    let (store, name) = (state.clone(), pipeline.to_owned());
    let rerun_failed = rerun == Rerun::Failed;
    let finished = crate::profile::spawn_blocking(Stage::Actions, move || {
        store.start_actions(&name, &keys, rerun_failed)
    })
    .await??;
    let mut todo = Vec::with_capacity(actions.len());
    for action in actions {
        // Usually none: the page is new.
        if !finished.is_empty() && finished.contains_key(&action.request.key) {
            action.state = ActionState::Skipped;
        } else {
            todo.push(action);
        }
    }
    // Futures collected first: a lazily mapped stream of borrowing
    // closures trips the compiler's `Send` inference in spawned tasks.
    let calls: Vec<_> = todo.iter().map(|a| executors.execute(&a.request)).collect();
    let results: Vec<ActionResult> = stream::iter(calls)
        .buffered(ACTION_CONCURRENCY)
        .collect()
        .await;
    executors.sync().await?;
    for (action, result) in todo.into_iter().zip(results) {
        if let ActionResult::Failed { outcome, reason } = &result {
            tracing::warn!(%pipeline, key = %action.request.key, %outcome, %reason, "action failed");
        }
        action.state = ActionState::Ran(result);
    }
    Ok(())
}
