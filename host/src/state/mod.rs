//! What must survive a crash: per-pipeline offsets, the action ledger and
//! dead letters, behind the [`StateStore`] trait.
//!
//! The one rule: [`StateStore::commit`] writes a page's action outcomes, its
//! dead letters and the new offset in one transaction, so after a crash the
//! offset never points past work that was not recorded.

mod dead;
mod migrate;
pub mod postgres;
pub mod sqlite;
mod versions;

pub use dead::{
    raw_json, DeadKind, DeadLetter, KeyedAction, Letter, NewDeadLetter, RefusedLetter, RowLetter,
    StoredEvent, UndecidedLetter,
};

use crate::source::Cursor;
use serde::Serialize;
use std::collections::HashMap;

/// The outcome of one action, for the ledger.
#[derive(Debug, Clone, PartialEq)]
pub struct ActionOutcome {
    /// The idempotency key ([`crate::pipeline::action_key`]).
    pub key: String,
    /// `http_<code>`, `timedout`, `recorded`, `error`...
    pub outcome: String,
    /// Whether it happened (else it failed for good and is dead-lettered).
    pub done: bool,
}

/// How a finished action ended, as the ledger keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    /// It happened: never run again.
    Done,
    /// It failed for good and waits in dead letters: a page read again
    /// skips it; `dlq replay` runs it again.
    Failed,
}

/// Everything one page's work leaves behind, written at once.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Commit {
    /// The new offset: just past the page's last row.
    pub cursor: Option<Cursor>,
    /// Actions that finished (done or dead-lettered).
    pub actions: Vec<ActionOutcome>,
    /// New dead letters.
    pub dead_letters: Vec<NewDeadLetter>,
    /// The lease it is made under (`None`: one host owns every pipeline).
    pub fence: Option<Fence>,
}

/// A pipeline's stored offset.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoredOffset {
    /// The pipeline.
    pub pipeline: String,
    /// Where it stands.
    pub cursor: Cursor,
    /// When it last moved, epoch milliseconds.
    pub updated_ms: i64,
}

/// Why the state store failed. Always fatal for the pipeline's current page:
/// nothing is committed, so the page is read again — by this host after a
/// [`StateError::Failed`], by the lease's new owner after a
/// [`StateError::Fenced`].
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The store failed or could not be reached; retrying may help.
    #[error("state store: {0}")]
    Failed(String),
    /// Another host claimed the pipeline since this one's lease began: it
    /// must stop acting for it.
    #[error("pipeline {pipeline}: the lease of epoch {epoch} was lost (now {now}); the commit was refused")]
    Fenced {
        /// The pipeline.
        pipeline: String,
        /// The epoch this host held.
        epoch: i64,
        /// Who holds it now, and at which epoch (or that nobody does).
        now: String,
    },
}

/// The lease a commit is made under (see [`crate::cluster`]): the store
/// refuses the commit unless the pipeline's lease is still this owner's at
/// this epoch, checked in the commit's own transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// The host holding the lease.
    pub owner: std::sync::Arc<str>,
    /// The epoch its claim began.
    pub epoch: i64,
}

/// A plugin version a tenant uploaded (the component itself is kept by
/// the admin API's store, named by its digest).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PluginVersion {
    /// The tenant that uploaded it.
    pub tenant: String,
    /// SHA-256 of the component, hex: its version everywhere.
    pub digest: String,
    /// Its size in bytes.
    pub size: u64,
    /// The contract it speaks (`0.1`, `0.2`, `0.2-json`).
    pub contract: String,
    /// When it was first uploaded, epoch milliseconds.
    pub uploaded_ms: i64,
}

/// A pipeline's plugin as switched by the admin API: one entry of its
/// stack of switches.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PluginPin {
    /// The stored version, or `None`: back to the config's plugin file.
    pub digest: Option<String>,
    /// When, epoch milliseconds.
    pub set_ms: i64,
}

/// The durable state of every pipeline.
pub trait StateStore: Send + Sync {
    /// The pipeline's offset, if it has one.
    fn offset(&self, pipeline: &str) -> Result<Option<Cursor>, StateError>;

    /// Stores `cursor` as the pipeline's offset unless it has one; returns
    /// the offset in force. Used once, at first start, so that
    /// `timestamp.initial = -1` ("now") is fixed for good.
    fn init_offset(&self, pipeline: &str, cursor: &Cursor) -> Result<Cursor, StateError>;

    /// Sets (or, with `None`, forgets) the offset: `freshet offsets reset`.
    fn reset_offset(&self, pipeline: &str, cursor: Option<&Cursor>) -> Result<(), StateError>;

    /// Every pipeline's offset.
    fn offsets(&self) -> Result<Vec<StoredOffset>, StateError>;

    /// Of these idempotency keys, the ones whose actions already finished,
    /// and how.
    fn finished_actions(&self, keys: &[String]) -> Result<HashMap<String, Finished>, StateError>;

    /// Before actions run: of `keys`, returns those the ledger has finished
    /// and how, and marks every other one `started` (so the ledger shows an
    /// action that started and never finished) — a `failed` one too when
    /// `rerun_failed` (`dlq replay`), which then leaves it out of the answer.
    fn start_actions(
        &self,
        pipeline: &str,
        keys: &[String],
        rerun_failed: bool,
    ) -> Result<HashMap<String, Finished>, StateError>;

    /// Writes a page's outcomes, dead letters and offset atomically.
    fn commit(&self, pipeline: &str, commit: &Commit) -> Result<(), StateError>;

    /// Dead letters of a pipeline (all when `None`), oldest first.
    fn dead_letters(&self, pipeline: Option<&str>) -> Result<Vec<DeadLetter>, StateError>;

    /// After replaying dead letter `id` of `pipeline`: on success it is
    /// removed and what the replay left (finished actions, new dead
    /// letters) written, in one transaction; on failure it stays, with the
    /// new code and reason.
    fn settle_dead_letter(
        &self,
        pipeline: &str,
        id: i64,
        result: &Settled,
    ) -> Result<(), StateError>;

    /// Whether the store answers (for `/readyz`).
    fn check(&self) -> Result<(), StateError>;

    /// Records an uploaded plugin version (again: no change).
    fn add_plugin_version(&self, version: &PluginVersion) -> Result<(), StateError>;

    /// A tenant's uploaded versions, oldest first.
    fn plugin_versions(&self, tenant: &str) -> Result<Vec<PluginVersion>, StateError>;

    /// Points a pipeline at a stored version (`None`: its config's file):
    /// pushed on its stack of switches.
    fn pin_plugin(&self, pipeline: &str, digest: Option<&str>) -> Result<(), StateError>;

    /// Undoes a pipeline's last switch (a rollback): pops its stack.
    fn pop_plugin_pin(&self, pipeline: &str) -> Result<(), StateError>;

    /// A pipeline's stack of switches, newest first (empty: it runs its
    /// config's file).
    fn plugin_pins(&self, pipeline: &str) -> Result<Vec<PluginPin>, StateError>;

    /// Every pipeline's lease, for `freshet status` (none where one host
    /// owns every pipeline).
    fn leases(&self) -> Result<Vec<LeaseRow>, StateError> {
        Ok(Vec::new())
    }
}

/// A pipeline's lease as the store holds it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LeaseRow {
    /// The pipeline.
    pub pipeline: String,
    /// The host holding it, if any.
    pub owner: Option<String>,
    /// Bumped by every claim.
    pub epoch: i64,
    /// Milliseconds until it ends unless renewed (negative: ended), on the
    /// database's clock.
    pub remaining_ms: i64,
}

/// How a replayed dead letter ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Settled {
    /// Delivered, or the action happened: what the replay leaves behind
    /// (ledger outcomes, dead letters of actions that failed; no cursor).
    Done(Commit),
    /// Failed again: the new code and reason.
    Failed {
        /// The code.
        code: String,
        /// The reason.
        reason: String,
    },
}

/// The configured store, opened (and, for PostgreSQL, migrated).
pub struct Opened {
    /// The store every pipeline and command uses.
    pub store: std::sync::Arc<dyn StateStore>,
    /// The same store when it is PostgreSQL: hosts share pipelines through
    /// its leases.
    pub shared: Option<std::sync::Arc<postgres::PostgresState>>,
}

/// Opens `[state]`; errors name the key.
pub fn open(config: &crate::config::StateConfig) -> anyhow::Result<Opened> {
    use crate::config::StateKind;
    use std::sync::Arc;
    Ok(match config.kind {
        StateKind::Sqlite => Opened {
            store: Arc::new(
                sqlite::SqliteState::open(&config.path)
                    .map_err(|e| anyhow::anyhow!("state.path: {e}"))?,
            ),
            shared: None,
        },
        StateKind::Postgres => {
            let var = config.url_env.as_deref().unwrap_or_default();
            let url = std::env::var(var).map_err(|_| {
                anyhow::anyhow!(
                    "state.url_env: {var} is not set (the PostgreSQL connection string)"
                )
            })?;
            let store = Arc::new(
                postgres::PostgresState::connect(
                    &url,
                    std::time::Duration::from_millis(config.lease_ttl_ms),
                )
                .map_err(|e| anyhow::anyhow!("state (PostgreSQL at {var}): {e}"))?,
            );
            Opened {
                store: store.clone(),
                shared: Some(store),
            }
        }
    })
}

/// Milliseconds since the epoch, as the stores stamp their rows.
fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// A cursor's key as the stores keep it (JSON text, none before any row).
fn key_json(cursor: &Cursor) -> Result<Option<String>, StateError> {
    cursor
        .key
        .as_ref()
        .map(|k| serde_json::to_string(k).map_err(|e| StateError::Failed(e.to_string())))
        .transpose()
}

/// A cursor from the stores' columns.
fn cursor_from(ts: i64, key: Option<String>) -> Result<Cursor, StateError> {
    let key: Option<crate::source::Key> = key
        .map(|k| serde_json::from_str(&k))
        .transpose()
        .map_err(|e| StateError::Failed(e.to_string()))?;
    Ok(Cursor {
        ts: crate::source::Timestamp(ts),
        key,
    })
}
