//! One page, start to finish: map and decide in the sandbox, deliver the
//! events, run the actions of the delivered ones, and commit — outcomes,
//! dead letters and the new offset in one transaction.

use super::{Pipeline, Stats};
use crate::actions::{action_json, ActionRequest, ActionResult};
use crate::deliver::{Delivery, Message};
use crate::plugin::contract::{Action, Event, Row, RowBatch};
use crate::plugin::{Outcome, PluginError};
use crate::source::{Cursor, Page};
use crate::state::{ActionOutcome, Commit, DeadKind, DeadLetter};
use futures::stream::{self, StreamExt as _};

/// Actions of one page run at once, at most.
const ACTION_CONCURRENCY: usize = 32;

/// What the sandbox made of a page's rows.
pub(super) struct Mapped {
    /// Just past the page's last row: the offset once the page is done.
    last: Cursor,
    /// The rows, kept for dead letters.
    batches: Vec<RowBatch>,
    /// Per row (in page order): its events, or why it failed.
    rows: Vec<Outcome<Event>>,
    /// Per event (in the order of `rows` flattened): its actions, or why not.
    decisions: Vec<Outcome<Action>>,
}

impl Mapped {
    /// Just past the page's last row.
    pub(super) fn last(&self) -> &Cursor {
        &self.last
    }
}

fn dead(kind: DeadKind, identity: &str, code: &str, reason: String, payload: String) -> DeadLetter {
    DeadLetter {
        id: 0,
        pipeline: String::new(),
        kind,
        identity: identity.to_owned(),
        code: code.to_owned(),
        reason,
        payload,
        created_ms: 0,
    }
}

fn event_json(event: &Event) -> String {
    serde_json::json!({
        "id": event.id,
        "timestamp": crate::source::Timestamp::from_instant(event.timestamp).rfc3339(),
        "body": serde_json::from_str::<serde_json::Value>(&event.body).unwrap_or_else(|_| event.body.clone().into()),
    })
    .to_string()
}

fn plugin_dead(kind: DeadKind, identity: &str, e: &PluginError, payload: String) -> DeadLetter {
    dead(kind, identity, e.code(), e.to_string(), payload)
}

impl Pipeline {
    /// Runs the plugin over a page on the blocking pool; `None` for an
    /// empty page.
    pub(super) async fn map_page(&self, page: Page) -> anyhow::Result<Option<Mapped>> {
        let Some(last) = page.rows.last().map(|r| r.cursor.clone()) else {
            return Ok(None);
        };
        let columns = self.source.columns().to_vec();
        let mut rows: Vec<Row> = page.rows.into_iter().map(|r| r.row).collect();
        let mut batches = Vec::new();
        while !rows.is_empty() {
            let rest = rows.split_off(rows.len().min(self.batch_size));
            batches.push(RowBatch {
                columns: columns.clone(),
                rows: std::mem::replace(&mut rows, rest),
            });
        }
        let sandbox = self.sandbox.clone();
        let batch_size = self.batch_size;
        let mapped = tokio::task::spawn_blocking(move || {
            let mut outcomes = Vec::new();
            for batch in &batches {
                outcomes.extend(sandbox.map_rows(batch));
            }
            let events: Vec<Event> = outcomes
                .iter()
                .flat_map(|o| o.iter().flatten().cloned())
                .collect();
            let mut decisions = Vec::with_capacity(events.len());
            for chunk in events.chunks(batch_size) {
                decisions.extend(sandbox.decide(chunk));
            }
            Mapped {
                last,
                batches,
                rows: outcomes,
                decisions,
            }
        })
        .await?;
        Ok(Some(mapped))
    }

    /// Delivers a mapped page, runs its actions and commits; returns the
    /// committed cursor and adds the page's counters to `total`.
    pub(super) async fn finish(&self, mapped: Mapped, total: &mut Stats) -> anyhow::Result<Cursor> {
        // Counted apart and added only once committed: the counters say what
        // is done, not what was attempted.
        let mut page = Stats::default();
        let stats = &mut page;
        let last = mapped.last.clone();
        let mut commit = Commit {
            cursor: Some(last.clone()),
            ..Commit::default()
        };
        let rows = mapped
            .batches
            .iter()
            .flat_map(|b| b.rows.iter().map(move |r| (r, &b.columns)));

        // Events in page order, with their row's identity and decisions.
        let mut events: Vec<(&str, &Event, &Outcome<Action>)> = Vec::new();
        let mut decisions = mapped.decisions.iter();
        for ((row, columns), outcome) in rows.zip(&mapped.rows) {
            stats.rows += 1;
            match outcome {
                Ok(list) => {
                    for event in list {
                        let Some(decided) = decisions.next() else {
                            break;
                        };
                        events.push((&row.identity, event, decided));
                    }
                }
                Err(e) => {
                    tracing::debug!(pipeline = %self.name, identity = %row.identity, error = %e, "row failed in the plugin");
                    commit.dead_letters.push(plugin_dead(
                        DeadKind::Row,
                        &row.identity,
                        e,
                        crate::source::row_json(columns, row),
                    ));
                }
            }
        }
        stats.events += events.len() as u64;

        let messages: Vec<Message> = events
            .iter()
            .map(|(identity, event, _)| Message {
                identity: (*identity).to_owned(),
                json: self.envelopes.render(event),
            })
            .collect();
        let deliveries = self.sink.deliver(&messages).await?;

        // Actions of delivered events, keyed (pipeline, identity, index).
        let mut requests = Vec::new();
        let mut index_of_row: Option<(&str, usize)> = None;
        for (((identity, event, decided), delivery), message) in
            events.iter().zip(&deliveries).zip(messages)
        {
            let next = match index_of_row {
                Some((id, n)) if id == *identity => n,
                _ => 0,
            };
            // Indices count every action the row's events decided, delivered
            // or not, so a replay gives each action the same key.
            let decided_count = decided.as_ref().map_or(0, Vec::len);
            match delivery {
                Delivery::Delivered => {
                    stats.delivered += 1;
                    match decided {
                        Ok(actions) => {
                            requests.extend(actions.iter().enumerate().map(|(j, action)| {
                                ActionRequest {
                                    key: format!("{}/{identity}/{}", self.name, next + j),
                                    identity: (*identity).to_owned(),
                                    action: action.clone(),
                                }
                            }));
                        }
                        Err(e) => commit.dead_letters.push(plugin_dead(
                            DeadKind::Event,
                            identity,
                            e,
                            event_json(event),
                        )),
                    }
                }
                Delivery::Rejected { code, reason } => {
                    stats.rejected += 1;
                    // AEP never saw the event, so no journey would have run:
                    // its actions wait with it in the dead letter.
                    commit.dead_letters.push(dead(
                        DeadKind::Event,
                        identity,
                        code,
                        reason.clone(),
                        message.json,
                    ));
                }
            }
            index_of_row = Some((identity, next + decided_count));
        }

        self.run_actions(requests, &mut commit, stats).await?;
        stats.dead_letters += commit.dead_letters.len() as u64;
        let state = self.state.clone();
        let name = self.name.clone();
        tokio::task::spawn_blocking(move || state.commit(&name, &commit)).await??;
        page.pages = 1;
        total.add(&page);
        Ok(last)
    }

    /// Runs the actions not already finished, recording them in the ledger
    /// before (started) and, through `commit`, after (finished).
    async fn run_actions(
        &self,
        requests: Vec<ActionRequest>,
        commit: &mut Commit,
        stats: &mut Stats,
    ) -> anyhow::Result<()> {
        if requests.is_empty() {
            return Ok(());
        }
        let keys: Vec<String> = requests.iter().map(|r| r.key.clone()).collect();
        let (state, name) = (self.state.clone(), self.name.clone());
        let finished = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            let finished = state.finished_actions(&keys)?;
            let todo: Vec<String> = keys.into_iter().filter(|k| !finished.contains(k)).collect();
            state.begin_actions(&name, &todo)?;
            Ok(finished)
        })
        .await??;
        let todo: Vec<&ActionRequest> = requests
            .iter()
            .filter(|r| !finished.contains(&r.key))
            .collect();
        stats.actions_skipped += (requests.len() - todo.len()) as u64;
        // Futures collected first: a lazily mapped stream of borrowing
        // closures trips the compiler's `Send` inference in spawned tasks.
        let calls: Vec<_> = todo.iter().map(|r| self.executors.execute(r)).collect();
        let outcomes: Vec<ActionResult> = stream::iter(calls)
            .buffered(ACTION_CONCURRENCY)
            .collect()
            .await;
        let results = todo.into_iter().zip(outcomes);
        self.executors.sync()?;
        for (request, result) in results {
            stats.actions += 1;
            let outcome = match result {
                ActionResult::Done(outcome) => outcome,
                ActionResult::Failed { outcome, reason } => {
                    tracing::warn!(pipeline = %self.name, key = %request.key, %outcome, %reason, "action failed");
                    let payload = serde_json::json!({"idempotency_key": request.key, "action": action_json(&request.action)});
                    commit.dead_letters.push(dead(
                        DeadKind::Action,
                        &request.identity,
                        &outcome,
                        reason,
                        payload.to_string(),
                    ));
                    outcome
                }
            };
            commit.actions.push(ActionOutcome {
                key: request.key.clone(),
                outcome,
            });
        }
        Ok(())
    }
}
