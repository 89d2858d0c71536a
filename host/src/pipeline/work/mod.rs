//! A page as one typed record from read to commit. Each stage fills its own
//! fields — the plugin a row's events and each event's decision, delivery an
//! event's fate, the ledger each action's outcome — and [`PageWork::settle`]
//! turns the finished record into what is committed, without I/O.

use super::Stats;
use crate::actions::{ActionRequest, ActionResult, StoredAction};
use crate::deliver::Delivery;
use crate::plugin::contract::{Action, Event, Row};
use crate::plugin::PluginError;
use crate::source::{Cursor, Timestamp};
use crate::state::{
    raw_json, ActionOutcome, Commit, KeyedAction, Letter, NewDeadLetter, RefusedLetter, RowLetter,
    StoredEvent, UndecidedLetter,
};
use std::sync::Arc;

/// One page of rows and all that became of them.
pub struct PageWork {
    /// Just past the page's last row: the offset once the page is done.
    pub last: Cursor,
    /// The plugin version (content hash) that mapped and decided the page.
    pub version: String,
    /// The source's columns, in the order of each row's cells.
    pub columns: Vec<String>,
    /// The rows, in source order.
    pub rows: Vec<RowWork>,
    /// When the page was read (its latency runs to the commit).
    pub read_at: std::time::Instant,
    /// Each row's timestamp, when the host exports metrics (its delivery
    /// lag); empty otherwise.
    pub stamps: Vec<Timestamp>,
}

/// One row: its events, or why the plugin failed on it.
pub struct RowWork {
    /// The row as read.
    pub row: Row,
    /// What the plugin made of it.
    pub result: Result<Vec<EventWork>, PluginError>,
}

/// One event of a row.
pub struct EventWork {
    /// The event as the plugin produced it.
    pub event: Event,
    /// The actions the plugin decided for it (each keyed), or why not.
    pub decision: Result<Vec<ActionWork>, PluginError>,
    /// Its envelope, kept when the destination refused it (the dead
    /// letter's); empty otherwise.
    pub envelope: String,
    /// What the destination did with it; `None` until delivered.
    pub delivery: Option<Delivery>,
}

/// One action of an event.
pub struct ActionWork {
    /// What to run, under which key.
    pub request: ActionRequest,
    /// What became of it; [`ActionState::Pending`] until the ledger ran it.
    pub state: ActionState,
}

/// Where an action stands.
#[derive(Debug, Clone, PartialEq)]
pub enum ActionState {
    /// Not run (its event was not delivered, or not yet).
    Pending,
    /// The ledger had it finished already (a replay): not run again.
    Skipped,
    /// Run to this result.
    Ran(ActionResult),
}

/// An action's idempotency key: `{pipeline}/{row identity}/{_id hash}/{index}`,
/// where `_id hash` is the event `_id`'s 64-bit FNV-1a hash in 16 hex digits
/// and the index counts the actions of that event's decision only. The key
/// depends on nothing but the event itself: a neighbour that fails,
/// succeeds or decides differently on a later run leaves it unchanged. The
/// identity leads so that a page's keys sort together (the ledger's inserts
/// stay local); the `_id` is hashed to keep keys short (the ledger, the
/// record target and every receiver handle them), and two events of one row
/// share a hash with a chance of about one in 10^19. `%` and `/` in the
/// identity are percent-encoded, so the parts never run together.
pub fn action_key(pipeline: &str, identity: &str, event_id: &str, index: usize) -> String {
    indexed(&key_prefix(pipeline, identity, event_id), index)
}

/// A key from its event's prefix and the action's index.
fn indexed(prefix: &str, index: usize) -> String {
    let mut digits = itoa::Buffer::new();
    let index = digits.format(index);
    let mut key = String::with_capacity(prefix.len() + index.len());
    key.push_str(prefix);
    key.push_str(index);
    key
}

/// `{pipeline}/{row identity}/{_id hash}/`: what the keys of one event's
/// actions share, built once per event.
fn key_prefix(pipeline: &str, identity: &str, event_id: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut key = String::with_capacity(pipeline.len() + identity.len() + 24);
    key.push_str(pipeline);
    key.push('/');
    if identity.contains(['/', '%']) {
        key.push_str(&identity.replace('%', "%25").replace('/', "%2F"));
    } else {
        key.push_str(identity);
    }
    key.push('/');
    let hash = fnv1a(event_id.as_bytes());
    let hex: [u8; 16] = std::array::from_fn(|i| HEX[((hash >> ((15 - i) * 4)) & 0xf) as usize]);
    key.push_str(std::str::from_utf8(&hex).expect("hex digits are ASCII"));
    key.push('/');
    key
}

/// 64-bit FNV-1a: small, fixed forever (keys outlive releases), and good
/// enough to tell a row's few events apart.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

impl ActionWork {
    /// The actions of one event, keyed.
    pub fn keyed(
        pipeline: &str,
        identity: &str,
        event_id: &str,
        actions: Vec<Action>,
    ) -> Vec<Self> {
        let identity: Arc<str> = identity.into();
        let prefix = key_prefix(pipeline, &identity, event_id);
        actions
            .into_iter()
            .enumerate()
            .map(|(j, action)| ActionWork {
                request: ActionRequest {
                    key: indexed(&prefix, j),
                    identity: identity.clone(),
                    action,
                },
                state: ActionState::Pending,
            })
            .collect()
    }

    /// Unkeyed: an action stored with its key (a dead letter's).
    pub fn stored(identity: &str, keyed: &KeyedAction) -> Self {
        ActionWork {
            request: ActionRequest {
                key: keyed.key.clone(),
                identity: identity.into(),
                action: keyed.action.0.clone(),
            },
            state: ActionState::Pending,
        }
    }

    fn keyed_action(&self) -> KeyedAction {
        KeyedAction {
            key: self.request.key.clone(),
            action: StoredAction(self.request.action.clone()),
        }
    }

    /// Adds what the action left to `commit`: its ledger outcome once run,
    /// and a dead letter if it failed for good. Counts it in `stats`.
    pub fn settle(self, commit: &mut Commit, stats: &mut Stats) -> anyhow::Result<()> {
        let ActionWork { request, state } = self;
        let result = match state {
            ActionState::Skipped => {
                stats.actions_skipped += 1;
                return Ok(());
            }
            ActionState::Pending => anyhow::bail!("action {} was never run", request.key),
            ActionState::Ran(result) => result,
        };
        stats.actions += 1;
        let (outcome, done) = match result {
            ActionResult::Done(outcome) => (outcome, true),
            ActionResult::Failed { outcome, reason } => {
                commit.dead_letters.push(NewDeadLetter {
                    identity: request.identity.to_string(),
                    code: outcome.clone(),
                    reason,
                    letter: Letter::Action(KeyedAction {
                        key: request.key.clone(),
                        action: StoredAction(request.action),
                    }),
                });
                (outcome, false)
            }
        };
        commit.actions.push(ActionOutcome {
            key: request.key,
            outcome,
            done,
        });
        Ok(())
    }
}

impl EventWork {
    fn stored(&self) -> StoredEvent {
        StoredEvent {
            id: self.event.id.clone(),
            timestamp: Timestamp::from_instant(self.event.timestamp).rfc3339(),
            body: raw_json(&self.event.body),
        }
    }
}

fn plugin_letter(identity: &str, e: &PluginError, letter: Letter) -> NewDeadLetter {
    NewDeadLetter {
        identity: identity.to_owned(),
        code: e.code().to_owned(),
        reason: e.to_string(),
        letter,
    }
}

impl PageWork {
    /// Every event of the page, in order.
    pub fn events_mut(&mut self) -> impl Iterator<Item = &mut EventWork> {
        self.rows
            .iter_mut()
            .filter_map(|r| r.result.as_mut().ok())
            .flatten()
    }

    /// Every action of a delivered event, in order.
    pub fn deliverable_actions(&mut self) -> Vec<&mut ActionWork> {
        self.events_mut()
            .filter(|e| e.delivery == Some(Delivery::Delivered))
            .filter_map(|e| e.decision.as_mut().ok())
            .flatten()
            .collect()
    }

    /// How the page's actions ended, counted by target and outcome
    /// (`done`, `failed`, `skipped`), for the metrics: a handful of entries
    /// however many actions the page had.
    pub fn action_tally(&mut self) -> Vec<(String, &'static str, u64)> {
        let mut tally: Vec<(String, &'static str, u64)> = Vec::new();
        for action in self.deliverable_actions() {
            let outcome = match &action.state {
                ActionState::Pending => continue,
                ActionState::Skipped => "skipped",
                ActionState::Ran(ActionResult::Done(_)) => "done",
                ActionState::Ran(ActionResult::Failed { .. }) => "failed",
            };
            let target = crate::actions::target_of(&action.request.action);
            match tally
                .iter_mut()
                .find(|(t, o, _)| t == target && *o == outcome)
            {
                Some(entry) => entry.2 += 1,
                None => tally.push((target.to_owned(), outcome, 1)),
            }
        }
        tally
    }

    /// What the finished page commits: dead letters for failed rows,
    /// undecided and refused events and failed actions, the ledger's
    /// outcomes, and the offset past the page. Counts go to `stats`. Fails
    /// only on a record some stage left unfinished (a bug, never input).
    pub fn settle(self, stats: &mut Stats) -> anyhow::Result<Commit> {
        let mut commit = Commit {
            cursor: Some(self.last),
            ..Commit::default()
        };
        let dead = &mut commit.dead_letters;
        let mut settled = Vec::new();
        for RowWork { row, result } in self.rows {
            stats.rows += 1;
            let identity = &row.identity;
            let events = match result {
                Ok(events) => events,
                Err(ref e) => {
                    stats.plugin_errors.count(e);
                    let json = crate::source::row_json(&self.columns, &row);
                    let letter = Letter::Row(RowLetter {
                        row: raw_json(&json),
                    });
                    dead.push(plugin_letter(identity, e, letter));
                    continue;
                }
            };
            for event in events {
                stats.events += 1;
                if let Err(e) = &event.decision {
                    stats.plugin_errors.count(e);
                    let letter = Letter::Undecided(UndecidedLetter {
                        event: event.stored(),
                    });
                    dead.push(plugin_letter(identity, e, letter));
                }
                match &event.delivery {
                    None => anyhow::bail!("event {} was never delivered", event.event.id),
                    Some(Delivery::Delivered) => {
                        stats.delivered += 1;
                        settled.extend(event.decision.into_iter().flatten());
                    }
                    Some(Delivery::Rejected {
                        ref code,
                        ref reason,
                    }) => {
                        stats.rejected += 1;
                        // AEP never saw the event, so no journey ran: its
                        // actions wait with it, keyed, for the replay.
                        let actions = event.decision.iter().flatten();
                        dead.push(NewDeadLetter {
                            identity: identity.clone(),
                            code: code.clone(),
                            reason: reason.clone(),
                            letter: Letter::Refused(RefusedLetter {
                                envelope: raw_json(&event.envelope),
                                actions: actions.map(ActionWork::keyed_action).collect(),
                            }),
                        });
                    }
                }
            }
        }
        for action in settled {
            action.settle(&mut commit, stats)?;
        }
        stats.dead_letters += commit.dead_letters.len() as u64;
        Ok(commit)
    }
}

#[cfg(test)]
mod tests;
