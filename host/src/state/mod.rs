//! What must survive a crash: per-pipeline offsets, the action ledger and
//! dead letters, behind the [`StateStore`] trait.
//!
//! The one rule: [`StateStore::commit`] writes a page's action outcomes, its
//! dead letters and the new offset in one transaction, so after a crash the
//! offset never points past work that was not recorded.

pub mod sqlite;

use crate::source::Cursor;
use serde::Serialize;
use std::collections::HashSet;

/// What a dead letter is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeadKind {
    /// A row the plugin could not map (or whose mapping the sandbox stopped).
    Row,
    /// An event the plugin could not decide on, or AEP rejected.
    Event,
    /// An action that failed for good.
    Action,
}

impl DeadKind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            DeadKind::Row => "row",
            DeadKind::Event => "event",
            DeadKind::Action => "action",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "row" => DeadKind::Row,
            "event" => DeadKind::Event,
            _ => DeadKind::Action,
        }
    }
}

/// A failure kept for an operator to inspect or replay.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeadLetter {
    /// Store-assigned id (0 before it is stored).
    pub id: i64,
    /// The pipeline.
    pub pipeline: String,
    /// What failed.
    pub kind: DeadKind,
    /// The source row's identity.
    pub identity: String,
    /// A short stable code (`out_of_fuel`, `http_400`, ...).
    pub code: String,
    /// The full reason, e.g. AEP's message.
    pub reason: String,
    /// What failed, as JSON (the row, the envelope, the action).
    pub payload: String,
    /// When it was stored, epoch milliseconds.
    pub created_ms: i64,
}

/// The outcome of one action, for the ledger.
#[derive(Debug, Clone, PartialEq)]
pub struct ActionOutcome {
    /// The idempotency key `(pipeline, row identity, action index)`.
    pub key: String,
    /// `http_<code>`, `timedout`, `recorded`, `error`...
    pub outcome: String,
}

/// Everything one page's work leaves behind, written at once.
#[derive(Debug, Clone, Default)]
pub struct Commit {
    /// The new offset: just past the page's last row.
    pub cursor: Option<Cursor>,
    /// Actions that finished (done or dead-lettered).
    pub actions: Vec<ActionOutcome>,
    /// New dead letters.
    pub dead_letters: Vec<DeadLetter>,
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
/// nothing is committed, so the page is read again.
#[derive(Debug, thiserror::Error)]
#[error("state store: {0}")]
pub struct StateError(pub String);

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

    /// Of these idempotency keys, the ones whose actions already finished.
    fn finished_actions(&self, keys: &[String]) -> Result<HashSet<String>, StateError>;

    /// Records that these actions are about to run, before they run, so the
    /// ledger shows an action that started but never finished.
    fn begin_actions(&self, pipeline: &str, keys: &[String]) -> Result<(), StateError>;

    /// Writes a page's outcomes, dead letters and offset atomically.
    fn commit(&self, pipeline: &str, commit: &Commit) -> Result<(), StateError>;

    /// Dead letters of a pipeline (all when `None`), oldest first.
    fn dead_letters(&self, pipeline: Option<&str>) -> Result<Vec<DeadLetter>, StateError>;

    /// After replaying dead letter `id`: on success it is removed (and a
    /// replayed action's ledger entry finished with `outcome`, in the same
    /// transaction); on failure it stays, with the new code and reason.
    fn settle_dead_letter(&self, id: i64, result: &Settled) -> Result<(), StateError>;
}

/// How a replayed dead letter ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Settled {
    /// Delivered, or the action happened (its ledger entry, if an action).
    Done(Option<ActionOutcome>),
    /// Failed again: the new code and reason.
    Failed {
        /// The code.
        code: String,
        /// The reason.
        reason: String,
    },
}
