//! One page, start to finish: map and decide in the sandbox, deliver the
//! events, run the actions of the delivered ones, and commit — outcomes,
//! dead letters and the new offset in one transaction.

use super::{Pipeline, Stats};
use crate::actions::{action_json, ActionRequest, ActionResult};
use crate::deliver::{Delivery, Message};
use crate::plugin::contract::{Action, Event, Row, RowBatch};
use crate::plugin::{Attempt, Outcome, PluginError, Session};
use crate::source::{Cursor, Page};
use crate::state::{ActionOutcome, Commit, DeadKind, DeadLetter};
use futures::stream::{self, StreamExt as _};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Actions of one page run at once, at most.
const ACTION_CONCURRENCY: usize = 32;

/// What the sandbox made of a page's rows.
pub(super) struct Mapped {
    /// Just past the page's last row: the offset once the page is done.
    last: Cursor,
    /// The rows, kept for dead letters.
    batches: Vec<Arc<RowBatch>>,
    /// Per row (in page order): its events, or why it failed.
    rows: Vec<Outcome<Event>>,
    /// Per event (in the order of `rows` flattened): its actions, or why not.
    decisions: Vec<Outcome<Action>>,
    /// The plugin version (content hash) that mapped and decided the page.
    version: String,
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

/// A failure that is the host's, not the input's: no instance could be made.
fn unavailable<T>(outcomes: &[Outcome<T>]) -> Option<&PluginError> {
    outcomes.iter().find_map(|o| match o {
        Err(e @ PluginError::Unavailable(_)) => Some(e),
        _ => None,
    })
}

/// One export, over a batch of inputs `I` answering `T`s: the whole batch
/// in one call, one of its inputs alone, and how many inputs it holds.
struct Calls<I, T> {
    whole: fn(&Session, &I) -> Attempt<T>,
    one: fn(&Session, &I, usize) -> Outcome<T>,
    len: fn(&I) -> usize,
}

// Manual impls: the derives would ask `I` and `T` to be `Copy`.
impl<I, T> Clone for Calls<I, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<I, T> Copy for Calls<I, T> {}

const MAP: Calls<RowBatch, Event> = Calls {
    whole: |s, batch| s.try_map_rows(batch),
    one: |s, batch, i| s.map_row(batch, i),
    len: |batch| batch.rows.len(),
};

const DECIDE: Calls<Vec<Event>, Action> = Calls {
    whole: |s, events| s.try_decide(events),
    one: |s, events, i| s.decide_one(&events[i]),
    len: Vec::len,
};

impl Pipeline {
    /// Runs a plugin export over `inputs` (batches of rows, or of events):
    /// all of them in one job on a plugin thread, in the class the
    /// pipeline's recent CPU use earns it (see [`crate::plugin::scheduler`]);
    /// then each input of a batch the sandbox stopped alone, each a job of
    /// its own, so a plugin burning its budget is moved to background
    /// priority between them. Fails once `stop` is cancelled: the page is
    /// abandoned and read again, rather than holding up shutdown behind a
    /// plugin that burns its budget on every row.
    async fn run_calls<I, T>(
        &self,
        session: &Session,
        stop: &CancellationToken,
        inputs: &[Arc<I>],
        calls: Calls<I, T>,
    ) -> anyhow::Result<Vec<Outcome<T>>>
    where
        I: Send + Sync + 'static,
        T: Send + 'static,
    {
        let job = {
            let (inputs, stop, s) = (inputs.to_vec(), stop.clone(), session.clone());
            move || {
                let live = || !stop.is_cancelled();
                let attempts = inputs.iter().take_while(|_| live());
                attempts
                    .map(|input| (calls.whole)(&s, input))
                    .collect::<Vec<_>>()
            }
        };
        let attempts = self.scheduler.run(self.sandbox.cpu(), job).await;
        let stopping = || anyhow::anyhow!("stopping: page abandoned mid-mapping");
        if attempts.len() < inputs.len() {
            return Err(stopping());
        }
        let mut outcomes = Vec::new();
        for (input, attempt) in inputs.iter().zip(attempts) {
            match attempt {
                Attempt::Done(done) => outcomes.extend(done),
                Attempt::Stopped(_) => {
                    for i in 0..(calls.len)(input) {
                        anyhow::ensure!(!stop.is_cancelled(), stopping());
                        let (input, s) = (input.clone(), session.clone());
                        let one = move || (calls.one)(&s, &input, i);
                        outcomes.push(self.scheduler.run(self.sandbox.cpu(), one).await);
                    }
                }
            }
        }
        Ok(outcomes)
    }

    /// Runs the plugin over a page; `None` for an empty page. Fails, so
    /// the page is read again later, if no instance could be made or `stop`
    /// came.
    pub(super) async fn map_page(
        &self,
        page: Page,
        stop: &CancellationToken,
    ) -> anyhow::Result<Option<Mapped>> {
        let Some(last) = page.rows.last().map(|r| r.cursor.clone()) else {
            return Ok(None);
        };
        let columns = self.source.columns().to_vec();
        let mut rows: Vec<Row> = page.rows.into_iter().map(|r| r.row).collect();
        let mut batches = Vec::new();
        while !rows.is_empty() {
            let rest = rows.split_off(rows.len().min(self.batch_size));
            batches.push(Arc::new(RowBatch {
                columns: columns.clone(),
                rows: std::mem::replace(&mut rows, rest),
            }));
        }
        // Every call of the page runs the version current now.
        let session = self.sandbox.session();
        let outcomes = self.run_calls(&session, stop, &batches, MAP).await?;
        // The events, in batches for `decide` (copied once: the outcomes
        // keep theirs for delivery).
        let mut chunks: Vec<Arc<Vec<Event>>> = Vec::new();
        let mut chunk = Vec::with_capacity(self.batch_size);
        for event in outcomes.iter().flat_map(|o| o.iter().flatten()) {
            chunk.push(event.clone());
            if chunk.len() == self.batch_size {
                chunks.push(Arc::new(std::mem::replace(
                    &mut chunk,
                    Vec::with_capacity(self.batch_size),
                )));
            }
        }
        if !chunk.is_empty() {
            chunks.push(Arc::new(chunk));
        }
        let decisions = self.run_calls(&session, stop, &chunks, DECIDE).await?;
        if let Some(e) = unavailable(&outcomes).or_else(|| unavailable(&decisions)) {
            anyhow::bail!("{e}");
        }
        Ok(Some(Mapped {
            last,
            batches,
            rows: outcomes,
            decisions,
            version: session.version().to_owned(),
        }))
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
                    stats.plugin_errors.count(e);
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
                json: self.envelopes.render(event, &mapped.version),
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
                        Err(e) => {
                            stats.plugin_errors.count(e);
                            commit.dead_letters.push(plugin_dead(
                                DeadKind::Event,
                                identity,
                                e,
                                event_json(event),
                            ));
                        }
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
