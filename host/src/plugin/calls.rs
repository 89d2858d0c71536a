//! The one retry policy for plugin calls: every batch in one call on a
//! warm instance (up to the pipeline's `instances` calls at once); a batch
//! the sandbox stopped (fuel, deadline, memory, trap)
//! is retried input by input, each in a fresh instance, so only the guilty
//! inputs fail. Where the calls run is the caller's: the pipeline hands each
//! to its scheduler (so a plugin burning its budget moves to background
//! priority between retries), `freshet plugin test` and the tests run them
//! in place.

use super::contract::{Action, Event, RowBatch};
use super::sandbox::{Attempt, Decided, Outcome, Session};
use super::PluginError;
use std::future::Future;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// One export over a batch of inputs `I` answering `T`s: the whole batch in
/// one call, one of its inputs alone, and how many inputs it holds.
pub struct Export<I, T> {
    whole: fn(&Session, &I) -> Attempt<T>,
    one: fn(&Session, &I, usize) -> Outcome<T>,
    len: fn(&I) -> usize,
}

// Manual impls: the derives would ask `I` and `T` to be `Copy`.
impl<I, T> Clone for Export<I, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<I, T> Copy for Export<I, T> {}

/// `process` (contract 0.2): rows to events with their actions.
pub const PROCESS: Export<RowBatch, Decided> = Export {
    whole: |s, batch| s.try_process(batch, true),
    one: |s, batch, i| s.process_row(batch, i, true),
    len: |batch| batch.rows.len(),
};

/// `process` for events only: the plugin is told not to decide.
pub const PROCESS_EVENTS: Export<RowBatch, Decided> = Export {
    whole: |s, batch| s.try_process(batch, false),
    one: |s, batch, i| s.process_row(batch, i, false),
    len: |batch| batch.rows.len(),
};

/// `map-rows` (contract 0.1): rows to events.
pub const MAP_ROWS: Export<RowBatch, Event> = Export {
    whole: |s, batch| s.try_map_rows(batch),
    one: |s, batch, i| s.map_row(batch, i),
    len: |batch| batch.rows.len(),
};

/// `decide`: events to actions.
pub const DECIDE: Export<Vec<Event>, Action> = Export {
    whole: |s, events| s.try_decide(events),
    one: |s, events, i| s.decide_one(&events[i]),
    len: Vec::len,
};

/// Where blocking plugin calls run.
pub trait Runner: Sync {
    /// Runs `job` to its end.
    fn run<R: Send + 'static>(
        &self,
        job: impl FnOnce() -> R + Send + 'static,
    ) -> impl Future<Output = R> + Send;
}

/// Runs calls on the calling thread: for callers already off the async
/// runtime's threads.
pub struct InPlace;

impl Runner for InPlace {
    fn run<R: Send + 'static>(
        &self,
        job: impl FnOnce() -> R + Send + 'static,
    ) -> impl Future<Output = R> + Send {
        std::future::ready(job())
    }
}

/// The calls stopped because `stop` was cancelled: the page is abandoned
/// and read again, rather than holding up shutdown behind a plugin that
/// burns its budget on every row.
#[derive(Debug, thiserror::Error)]
#[error("stopping: page abandoned mid-call")]
pub struct Stopped;

impl<I: Send + Sync + 'static, T: Send + 'static> Export<I, T> {
    /// Calls the export over `inputs`: one outcome per input of every batch,
    /// in order. The batches are shared out, in order, among up to the
    /// session's `instances` jobs that run at once, each on its own warm
    /// instance; then each input of a batch the sandbox stopped goes alone,
    /// a job of its own.
    pub async fn call(
        self,
        session: &Session,
        inputs: &[Arc<I>],
        runner: &impl Runner,
        stop: &CancellationToken,
    ) -> Result<Vec<Outcome<T>>, Stopped> {
        let lanes = session.instances().min(inputs.len()).max(1);
        let jobs = inputs
            .chunks(inputs.len().div_ceil(lanes).max(1))
            .map(|lane| {
                let (lane, stop, s) = (lane.to_vec(), stop.clone(), session.clone());
                runner.run(move || {
                    let live = || !stop.is_cancelled();
                    let attempts = lane.iter().take_while(|_| live());
                    attempts
                        .map(|input| (self.whole)(&s, input))
                        .collect::<Vec<_>>()
                })
            });
        let attempts: Vec<Attempt<T>> = futures::future::join_all(jobs)
            .await
            .into_iter()
            .flatten()
            .collect();
        if attempts.len() < inputs.len() {
            return Err(Stopped);
        }
        let mut outcomes = Vec::new();
        for (input, attempt) in inputs.iter().zip(attempts) {
            match attempt {
                Attempt::Done(done) => outcomes.extend(done),
                Attempt::Stopped(_) => {
                    for i in 0..(self.len)(input) {
                        if stop.is_cancelled() {
                            return Err(Stopped);
                        }
                        let (input, s) = (input.clone(), session.clone());
                        outcomes.push(runner.run(move || (self.one)(&s, &input, i)).await);
                    }
                }
            }
        }
        Ok(outcomes)
    }

    /// [`Export::call`] in place, on the calling thread, never stopped.
    pub fn call_in_place(self, session: &Session, input: I) -> Vec<Outcome<T>> {
        let (inputs, never) = ([Arc::new(input)], CancellationToken::new());
        futures::executor::block_on(self.call(session, &inputs, &InPlace, &never))
            .unwrap_or_default()
    }
}

/// Rows through the session's contract: per row, its events each with its
/// decision, in order. 0.2: one `process` call per batch. 0.1: `map-rows`
/// over the batches, then `decide` over their events in batches of
/// `batch_size`. Unless `decide`, every event decides on no action: a 0.1
/// plugin's `decide` is not called, a 0.2 plugin is asked not to decide and
/// any actions it sends anyway are dropped.
pub async fn process(
    session: &Session,
    rows: &[Arc<RowBatch>],
    batch_size: usize,
    decide: bool,
    runner: &impl Runner,
    stop: &CancellationToken,
) -> Result<Vec<Outcome<Decided>>, Stopped> {
    if session.contract().crosses_once() {
        if decide {
            return PROCESS.call(session, rows, runner, stop).await;
        }
        let mut answers = PROCESS_EVENTS.call(session, rows, runner, stop).await?;
        // Asked not to decide: whatever actions came anyway are dropped.
        for decided in answers.iter_mut().flatten().flatten() {
            decided.actions = Ok(Vec::new());
        }
        return Ok(answers);
    }
    let mapped = MAP_ROWS.call(session, rows, runner, stop).await?;
    // The events, moved into batches for `decide` and back; each row keeps
    // how many are its own.
    let mut events = Vec::new();
    let shapes: Vec<Result<usize, PluginError>> = mapped
        .into_iter()
        .map(|outcome| {
            outcome.map(|mut mine| {
                let n = mine.len();
                events.append(&mut mine);
                n
            })
        })
        .collect();
    let count = events.len();
    let event_batches: Vec<Arc<Vec<Event>>> = batches(events, batch_size.max(1))
        .into_iter()
        .map(Arc::new)
        .collect();
    let decisions = if decide {
        DECIDE.call(session, &event_batches, runner, stop).await?
    } else {
        (0..count).map(|_| Ok(Vec::new())).collect()
    };
    let mut decided = unshare(event_batches).flatten().zip(decisions);
    Ok(shapes
        .into_iter()
        .map(|shape| {
            shape.map(|n| {
                let mine = decided.by_ref().take(n);
                mine.map(|(event, actions)| Decided { event, actions })
                    .collect()
            })
        })
        .collect())
}

/// `items` in batches of at most `size`, each item moved once.
pub fn batches<T>(items: Vec<T>, size: usize) -> Vec<Vec<T>> {
    let mut out = Vec::with_capacity(items.len().div_ceil(size));
    let mut items = items.into_iter();
    loop {
        let batch: Vec<T> = items.by_ref().take(size).collect();
        if batch.is_empty() {
            return out;
        }
        out.push(batch);
    }
}

/// The inputs back from the calls that borrowed them (the calls are over,
/// so each is held once; a clone only if something still holds one).
pub fn unshare<T: Clone>(shared: Vec<Arc<T>>) -> impl Iterator<Item = T> {
    shared
        .into_iter()
        .map(|a| Arc::try_unwrap(a).unwrap_or_else(|a| (*a).clone()))
}
