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

/// An action's idempotency key: `{pipeline}/{row identity}/{event _id}/{index}`,
/// the index counting the actions of that event's decision only. Each part
/// has `%` and `/` percent-encoded, so no two (identity, `_id`) pairs share a
/// key. The key depends on nothing but the event itself: a neighbour that
/// fails, succeeds or decides differently on a later run leaves it unchanged.
pub fn action_key(pipeline: &str, identity: &str, event_id: &str, index: usize) -> String {
    fn part(s: &str) -> std::borrow::Cow<'_, str> {
        if s.contains(['%', '/']) {
            s.replace('%', "%25").replace('/', "%2F").into()
        } else {
            s.into()
        }
    }
    format!(
        "{}/{}/{}/{index}",
        part(pipeline),
        part(identity),
        part(event_id)
    )
}

impl ActionWork {
    /// The actions of one event, keyed.
    pub fn keyed(
        pipeline: &str,
        identity: &str,
        event_id: &str,
        actions: Vec<Action>,
    ) -> Vec<Self> {
        actions
            .into_iter()
            .enumerate()
            .map(|(j, action)| ActionWork {
                request: ActionRequest {
                    key: action_key(pipeline, identity, event_id, j),
                    identity: identity.to_owned(),
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
                identity: identity.to_owned(),
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
    pub fn settle(&self, commit: &mut Commit, stats: &mut Stats) -> anyhow::Result<()> {
        let result = match &self.state {
            ActionState::Skipped => {
                stats.actions_skipped += 1;
                return Ok(());
            }
            ActionState::Pending => {
                anyhow::bail!("action {} was never run", self.request.key)
            }
            ActionState::Ran(result) => result,
        };
        stats.actions += 1;
        let (outcome, done) = match result {
            ActionResult::Done(outcome) => (outcome.clone(), true),
            ActionResult::Failed { outcome, reason } => {
                commit.dead_letters.push(NewDeadLetter {
                    identity: self.request.identity.clone(),
                    code: outcome.clone(),
                    reason: reason.clone(),
                    letter: Letter::Action(self.keyed_action()),
                });
                (outcome.clone(), false)
            }
        };
        commit.actions.push(ActionOutcome {
            key: self.request.key.clone(),
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

    /// What the finished page commits: dead letters for failed rows,
    /// undecided and refused events and failed actions, the ledger's
    /// outcomes, and the offset past the page. Counts go to `stats`. Fails
    /// only on a record some stage left unfinished (a bug, never input).
    pub fn settle(&self, stats: &mut Stats) -> anyhow::Result<Commit> {
        let mut commit = Commit {
            cursor: Some(self.last.clone()),
            ..Commit::default()
        };
        let dead = &mut commit.dead_letters;
        let mut settled = Vec::new();
        for row in &self.rows {
            stats.rows += 1;
            let identity = &row.row.identity;
            let events = match &row.result {
                Ok(events) => events,
                Err(e) => {
                    stats.plugin_errors.count(e);
                    let json = crate::source::row_json(&self.columns, &row.row);
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
                        settled.extend(event.decision.iter().flatten());
                    }
                    Some(Delivery::Rejected { code, reason }) => {
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
mod tests {
    use super::*;
    use crate::plugin::contract::{Instant, Value, WebhookRequest};
    use crate::state::DeadKind;

    fn hook(n: u32) -> Action {
        Action::Webhook(WebhookRequest {
            target: "hook".into(),
            body: format!("{{\"n\":{n}}}"),
        })
    }

    fn event(identity: &str, id: &str, actions: Result<Vec<Action>, PluginError>) -> EventWork {
        EventWork {
            event: Event {
                id: id.into(),
                timestamp: Instant {
                    seconds: 0,
                    nanos: 0,
                },
                body: "{}".into(),
            },
            decision: actions.map(|a| ActionWork::keyed("p", identity, id, a)),
            envelope: format!("{{\"body\":\"{id}\"}}"),
            delivery: None,
        }
    }

    fn page(rows: Vec<Result<Vec<EventWork>, PluginError>>) -> PageWork {
        PageWork {
            last: Cursor::before(Timestamp(5)),
            version: "v".into(),
            columns: vec!["id".into()],
            rows: rows
                .into_iter()
                .enumerate()
                .map(|(i, result)| RowWork {
                    row: Row {
                        identity: format!("r{}", i + 1),
                        cells: vec![Value::Integer(i as i64)],
                    },
                    result,
                })
                .collect(),
        }
    }

    #[test]
    fn keys_depend_on_the_event_alone_and_never_collide() {
        assert_eq!(action_key("p", "7", "e", 0), "p/7/e/0");
        assert_ne!(
            action_key("p", "a/b", "c", 0),
            action_key("p", "a", "b/c", 0)
        );
        assert_eq!(action_key("p", "a/b%", "c", 1), "p/a%2Fb%25/c/1");
        // The second event's keys are the same whether the first decided
        // (two actions) or failed.
        let first_failed = ActionWork::keyed("p", "r", "e2", vec![hook(1)]);
        assert_eq!(first_failed[0].request.key, "p/r/e2/0");
    }

    #[test]
    fn a_refused_event_keeps_its_actions_keyed_and_undecided_events_are_named() {
        let mut work = page(vec![
            Ok(vec![
                event("r1", "e1", Ok(vec![hook(1), hook(2)])),
                event("r1", "e2", Err(PluginError::Reject("no".into()))),
            ]),
            Err(PluginError::OutOfFuel { budget: 9 }),
            Ok(vec![event("r3", "e3", Ok(vec![hook(3)]))]),
        ]);
        let deliveries = [
            Delivery::Rejected {
                code: "http_400".into(),
                reason: "schema".into(),
            },
            Delivery::Delivered,
            Delivery::Delivered,
        ];
        for (e, d) in work.events_mut().zip(deliveries) {
            e.delivery = Some(d);
        }
        for a in work.deliverable_actions() {
            a.state = ActionState::Ran(ActionResult::Failed {
                outcome: "http_404".into(),
                reason: "gone".into(),
            });
        }
        let mut stats = Stats::default();
        let commit = work.settle(&mut stats).unwrap();
        let kinds: Vec<_> = commit
            .dead_letters
            .iter()
            .map(|d| (d.letter.kind(), d.identity.as_str(), d.code.as_str()))
            .collect();
        assert_eq!(
            kinds,
            [
                (DeadKind::Refused, "r1", "http_400"),
                (DeadKind::Undecided, "r1", "reject"),
                (DeadKind::Row, "r2", "out_of_fuel"),
                (DeadKind::Action, "r3", "http_404"),
            ]
        );
        let Letter::Refused(refused) = &commit.dead_letters[0].letter else {
            panic!()
        };
        let keys: Vec<_> = refused.actions.iter().map(|a| a.key.as_str()).collect();
        assert_eq!(keys, ["p/r1/e1/0", "p/r1/e1/1"]);
        assert_eq!(refused.envelope.get(), r#"{"body":"e1"}"#);
        assert_eq!(
            commit.actions.len(),
            1,
            "only the delivered event's action ran"
        );
        assert_eq!(
            (stats.rows, stats.events, stats.delivered, stats.rejected),
            (3, 3, 2, 1)
        );
        assert_eq!((stats.actions, stats.dead_letters), (1, 4));
        assert_eq!(commit.cursor, Some(Cursor::before(Timestamp(5))));
    }

    #[test]
    fn an_unfinished_record_is_an_error_not_a_silent_skip() {
        let mut stats = Stats::default();
        let work = page(vec![Ok(vec![event("r1", "e1", Ok(vec![]))])]);
        assert!(work
            .settle(&mut stats)
            .unwrap_err()
            .to_string()
            .contains("never delivered"));
        let mut work = page(vec![Ok(vec![event("r1", "e1", Ok(vec![hook(1)]))])]);
        work.events_mut()
            .for_each(|e| e.delivery = Some(Delivery::Delivered));
        assert!(work
            .settle(&mut stats)
            .unwrap_err()
            .to_string()
            .contains("never run"));
    }
}
