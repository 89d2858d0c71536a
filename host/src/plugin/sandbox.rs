//! One pipeline's sandbox: its current plugin (swappable while running),
//! warm instances reused from call to call (one per call running at once, up
//! to the pipeline's `instances`), and calls under the pipeline's limits.
//!
//! Every call gets a fresh budget (fuel, epoch deadline, log bytes); the
//! store's memory and table caps hold throughout. An instance is discarded
//! after any failure the sandbox stopped, so a trap never leaves a broken
//! instance behind, and a batch whose call was stopped is retried input by
//! input in fresh instances so only the guilty inputs fail.

use super::call::{
    arm, classify, decide_call, event_size, events_call, guest_error, map_call, outcomes,
    process_call, row_size, Call, RowsCall,
};
use super::check::{check_action, check_decided, check_event};
use super::contract::{Action, DecidedEvent, Event, RowBatch};
use super::runtime::{Bound, Plugin};
use super::scheduler::CpuMeter;
use super::store::StoreState;
use super::{CallContext, Limits, PluginError, Usage};
use std::ops::Range;
use std::sync::{Arc, Mutex};
use wasmtime::Store;

/// One input's answer: the outputs, or why it failed.
pub type Outcome<T> = Result<Vec<T>, PluginError>;

/// A live instance, its store, and the plugin it was made from.
struct Instance {
    store: Store<StoreState>,
    plugin: Bound,
    from: Plugin,
    /// Its linear memory when it was made, in bytes.
    start_memory: usize,
}

/// The growth past which an instance is retired after its call rather than
/// kept warm: its memory at start, and at least this much. Some guests'
/// heaps only grow (allocators that never return memory, collectors that
/// keep what they once needed), and grown heaps are slow: StarlingMonkey ran
/// the orders plugin at ~24,500 rows/s keeping its instances (they grew from
/// 9 to 63 MiB over 100 calls) and at ~32,500 retiring them past ~25 MiB;
/// Python, Go, C and Rust were unchanged. A fresh instance comes from the
/// pre-initialised image: ~10 µs to 1 ms, and its heap is small again, which
/// also bounds the host memory a warm pipeline holds.
const RETIRE_GROWTH: usize = 16 << 20;

impl Instance {
    /// Whether the instance grew past [`RETIRE_GROWTH`] since it was made.
    fn grown(&self) -> bool {
        let growth = self.start_memory.max(RETIRE_GROWTH);
        self.store.data().meter.peak_memory > self.start_memory.saturating_add(growth)
    }
}

/// One event of a row and what the plugin decided for it (contract 0.2's
/// answer, checked; a 0.1 plugin's `map-rows` and `decide` paired up).
#[derive(Debug, Clone, PartialEq)]
pub struct Decided {
    /// The event, its `_id` filled in if the plugin left it empty.
    pub event: Event,
    /// Its actions, or why there are none: the plugin's error, or an action
    /// that failed the host's checks.
    pub actions: Outcome<Action>,
}

/// A row's 0.2 answer, taken apart: actions checked one by one (a bad one
/// fails its event's decision, not the row) and empty `_id`s filled.
pub(super) fn decided(identity: &str, outcome: Outcome<DecidedEvent>) -> Outcome<Decided> {
    let mut decided = outcome.map(|answer| {
        answer
            .into_iter()
            .map(|d| Decided {
                event: d.event,
                actions: d.actions.map_err(guest_error).and_then(|actions| {
                    for action in &actions {
                        check_action(action).map_err(PluginError::Contract)?;
                    }
                    Ok(actions)
                }),
            })
            .collect()
    });
    fill_ids(identity, &mut decided, |d| &mut d.event);
    decided
}

/// Gives the events of a row's outcome that have no `_id` the host's.
pub(super) fn fill_ids<T>(
    identity: &str,
    outcome: &mut Outcome<T>,
    event: fn(&mut T) -> &mut Event,
) {
    if let Ok(outputs) = outcome {
        for (index, output) in outputs.iter_mut().enumerate() {
            let event = event(output);
            if event.id.is_empty() {
                event.id = super::derived_id(identity, index);
            }
        }
    }
}

/// One pipeline's view of its plugin. Cheap to clone (shared state).
///
/// Calls block their thread: make them on a plugin thread
/// ([`super::scheduler::Scheduler::run`]) or tokio's blocking pool, never
/// from an async task — a guest writing to stdout or stderr makes
/// wasmtime-wasi block on the runtime, which panics on a thread driving
/// async tasks.
#[derive(Clone)]
pub struct Sandbox {
    inner: Arc<Inner>,
}

struct Inner {
    current: Mutex<Plugin>,
    ctx: CallContext,
    /// Warm instances not in a call: at most `ctx.instances`.
    warm: Mutex<Vec<Instance>>,
    cpu: Arc<CpuMeter>,
}

impl Inner {
    fn warm(&self) -> std::sync::MutexGuard<'_, Vec<Instance>> {
        self.warm
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The plugin as it was when a page started: every call of the page uses
/// this version, even if a reload swaps the sandbox's plugin meanwhile.
#[derive(Clone)]
pub struct Session {
    sandbox: Sandbox,
    plugin: Plugin,
}

/// A call over a whole batch: its answers, or — when the sandbox stopped it
/// (fuel, deadline, memory, trap) — the error, and the inputs must be retried
/// one by one ([`Session::map_row`], [`Session::decide_one`]) to find the
/// guilty ones: the policy of [`super::calls`].
#[derive(Debug)]
pub enum Attempt<T> {
    /// One outcome per input.
    Done(Vec<Outcome<T>>),
    /// The sandbox stopped the call.
    Stopped(PluginError),
}

impl Sandbox {
    /// A sandbox for one pipeline.
    pub fn new(plugin: Plugin, ctx: CallContext) -> Self {
        Self {
            inner: Arc::new(Inner {
                current: Mutex::new(plugin),
                ctx,
                warm: Mutex::new(Vec::new()),
                cpu: Arc::new(CpuMeter::default()),
            }),
        }
    }

    /// The plugin new pages use.
    pub fn plugin(&self) -> Plugin {
        self.inner
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// What the calls run with.
    pub fn context(&self) -> &CallContext {
        &self.inner.ctx
    }

    /// The pipeline's recent use of plugin threads.
    pub fn cpu(&self) -> &Arc<CpuMeter> {
        &self.inner.cpu
    }

    /// Makes `plugin` the one new pages use; returns the one it replaces.
    /// Calls in flight finish on the old one.
    pub fn swap(&self, plugin: Plugin) -> Plugin {
        let old = std::mem::replace(
            &mut *self.inner.current.lock().unwrap_or_else(|e| e.into_inner()),
            plugin,
        );
        self.release();
        old
    }

    /// Drops the warm instances (the pipeline is idle): their pooled slots
    /// and memory go back to the engine.
    pub fn release(&self) {
        self.inner.warm().clear();
    }

    /// Warm instances waiting for a call.
    pub fn warm_instances(&self) -> usize {
        self.inner.warm().len()
    }

    /// The current plugin, held for a page.
    pub fn session(&self) -> Session {
        Session {
            sandbox: self.clone(),
            plugin: self.plugin(),
        }
    }

    /// Makes the warm instance now rather than at the first call, so that
    /// call costs only itself (and a plugin whose start-up fails says so
    /// before any row reaches it).
    pub fn warm_up(&self) -> Result<(), PluginError> {
        self.session().warm_up()
    }

    /// Maps rows to events with the current plugin, retrying a stopped
    /// batch row by row.
    pub fn map_rows(&self, batch: &RowBatch) -> Vec<Outcome<Event>> {
        self.session().map_rows(batch)
    }

    /// Decides actions for events with the current plugin.
    pub fn decide(&self, events: &[Event]) -> Vec<Outcome<Action>> {
        self.session().decide(events)
    }

    /// Maps rows and decides their events with the current plugin, on the
    /// calling thread, under either contract ([`super::calls::process`]).
    pub fn process(&self, batch: &RowBatch) -> Vec<Outcome<Decided>> {
        let session = self.session();
        let batches = [Arc::new(batch.clone())];
        let never = tokio_util::sync::CancellationToken::new();
        let size = batch.rows.len().max(1);
        let calls = super::calls::process(
            &session,
            &batches,
            size,
            true,
            &super::calls::InPlace,
            &never,
        );
        futures::executor::block_on(calls).unwrap_or_default()
    }
}

impl Session {
    /// The limits the calls run under.
    pub(super) fn limits(&self) -> &Limits {
        &self.sandbox.inner.ctx.limits
    }

    /// Calls that may run at once, each on its own instance.
    pub fn instances(&self) -> usize {
        self.sandbox.inner.ctx.instances.max(1)
    }

    /// The contract this session's plugin was built against.
    pub fn contract(&self) -> super::contract::Version {
        self.plugin.contract()
    }

    /// The version (content hash) this session's calls run.
    pub fn version(&self) -> &str {
        self.plugin.version()
    }

    /// Maps rows to events: one outcome per row, in order, under the one
    /// retry policy ([`super::calls`]), on the calling thread.
    pub fn map_rows(&self, batch: &RowBatch) -> Vec<Outcome<Event>> {
        super::calls::MAP_ROWS.call_in_place(self, batch.clone())
    }

    /// Decides the actions for events: one outcome per event, in order,
    /// under the one retry policy, on the calling thread.
    pub fn decide(&self, events: &[Event]) -> Vec<Outcome<Action>> {
        super::calls::DECIDE.call_in_place(self, events.to_vec())
    }

    /// Makes a warm instance of this session's plugin, if there is none.
    pub fn warm_up(&self) -> Result<(), PluginError> {
        let instance = self.take_warm()?;
        self.give_back(instance);
        Ok(())
    }

    /// A warm instance of this session's plugin, or a new one. Instances of
    /// another version (before a reload) are dropped on the way.
    fn take_warm(&self) -> Result<Instance, PluginError> {
        let mut warm = self.sandbox.inner.warm();
        while let Some(instance) = warm.pop() {
            if instance.from.same(&self.plugin) {
                return Ok(instance);
            }
        }
        drop(warm);
        self.instantiate()
    }

    /// Keeps an instance that finished its call for the next one, unless
    /// it grew too much ([`RETIRE_GROWTH`]).
    fn give_back(&self, instance: Instance) {
        if instance.grown() {
            tracing::debug!(
                plugin = %self.plugin.version(),
                memory_mib = instance.store.data().meter.peak_memory >> 20,
                "instance retired: its memory grew"
            );
            return;
        }
        let mut warm = self.sandbox.inner.warm();
        if warm.len() < self.instances() {
            warm.push(instance);
        }
    }

    /// Maps a batch in one call in a warm instance (contract 0.1). Rows
    /// over the input limit fail without reaching the plugin; events left
    /// without an `_id` get the host's ([`super::derived_id`]).
    pub fn try_map_rows(&self, batch: &RowBatch) -> Attempt<Event> {
        let mut attempt = self.try_rows(batch, map_call, check_event);
        if let Attempt::Done(outcomes) = &mut attempt {
            for (row, outcome) in batch.rows.iter().zip(outcomes) {
                fill_ids(&row.identity, outcome, |e| e);
            }
        }
        attempt
    }

    /// Maps row `i` of `batch` alone, in a fresh instance (contract 0.1).
    pub fn map_row(&self, batch: &RowBatch, i: usize) -> Outcome<Event> {
        let mut outcome = self.one_row(batch, i, map_call, check_event);
        fill_ids(&batch.rows[i].identity, &mut outcome, |e| e);
        outcome
    }

    /// Maps and (with `decide`) decides a batch in one call in a warm
    /// instance (contract 0.2): per row, its events with their actions.
    pub fn try_process(&self, batch: &RowBatch, decide: bool) -> Attempt<Decided> {
        let call = if decide { process_call } else { events_call };
        match self.try_rows(batch, call, check_decided) {
            Attempt::Done(outcomes) => Attempt::Done(
                (batch.rows.iter().zip(outcomes))
                    .map(|(row, outcome)| decided(&row.identity, outcome))
                    .collect(),
            ),
            Attempt::Stopped(e) => Attempt::Stopped(e),
        }
    }

    /// [`Session::try_process`] for row `i` of `batch` alone, in a fresh
    /// instance.
    pub fn process_row(&self, batch: &RowBatch, i: usize, decide: bool) -> Outcome<Decided> {
        let call = if decide { process_call } else { events_call };
        let outcome = self.one_row(batch, i, call, check_decided);
        decided(&batch.rows[i].identity, outcome)
    }

    /// `call` over a batch of rows in one call in a warm instance; rows over
    /// the input limit fail without reaching the plugin.
    fn try_rows<T>(
        &self,
        batch: &RowBatch,
        call: RowsCall<T>,
        check: fn(&T) -> Result<usize, String>,
    ) -> Attempt<T> {
        let limits = self.limits();
        let limit = limits.input_bytes_per_row;
        let sizes: Vec<usize> = batch.rows.iter().map(row_size).collect();
        let fits = |size: usize| size as u64 <= limit;
        let budget = sizes
            .iter()
            .filter(|&&s| fits(s))
            .map(|&s| limits.budget(s))
            .sum();
        if sizes.iter().all(|&s| fits(s)) {
            return self.batched(batch.rows.len(), budget, &*call(batch), check);
        }
        let fitting = RowBatch {
            columns: batch.columns.clone(),
            rows: (batch.rows.iter().zip(&sizes))
                .filter(|(_, &s)| s as u64 <= limit)
                .map(|(r, _)| r.clone())
                .collect(),
        };
        let mapped = match self.batched(fitting.rows.len(), budget, &*call(&fitting), check) {
            Attempt::Done(mapped) => mapped,
            stopped => return stopped,
        };
        let mut mapped = mapped.into_iter();
        Attempt::Done(
            sizes
                .iter()
                .map(|&size| {
                    if size as u64 > limit {
                        Err(PluginError::InputTooLarge { size, limit })
                    } else {
                        mapped.next().unwrap_or_else(|| Ok(Vec::new()))
                    }
                })
                .collect(),
        )
    }

    /// `call` over row `i` of `batch` alone, in a fresh instance.
    fn one_row<T>(
        &self,
        batch: &RowBatch,
        i: usize,
        call: RowsCall<T>,
        check: fn(&T) -> Result<usize, String>,
    ) -> Outcome<T> {
        let limits = self.limits();
        let (size, limit) = (row_size(&batch.rows[i]), limits.input_bytes_per_row);
        if size as u64 > limit {
            return Err(PluginError::InputTooLarge { size, limit });
        }
        self.one(i, limits.budget(size), &*call(batch), check)
    }

    /// Decides a batch of events in one call in the warm instance.
    pub fn try_decide(&self, events: &[Event]) -> Attempt<Action> {
        let limits = self.limits();
        let budget = events.iter().map(|e| limits.budget(event_size(e))).sum();
        self.batched(events.len(), budget, &decide_call(events), check_action)
    }

    /// Decides one event alone, in a fresh instance.
    pub fn decide_one(&self, event: &Event) -> Outcome<Action> {
        let one = std::slice::from_ref(event);
        let budget = self.limits().budget(event_size(event));
        self.one(0, budget, &decide_call(one), check_action)
    }

    /// A fresh instance in a fresh store; its start-up runs under the budget
    /// of one empty row.
    fn instantiate(&self) -> Result<Instance, PluginError> {
        let ctx = &self.sandbox.inner.ctx;
        let loaded = self.plugin.loaded();
        let mut store = Store::new(&loaded.engine, StoreState::new(ctx));
        store.limiter(|state| &mut state.meter);
        arm(&mut store, ctx.limits.fuel_per_row, &ctx.limits, 1)?;
        let plugin = loaded.pre.instantiate(&mut store).map_err(|e| {
            if e.downcast_ref::<wasmtime::PoolConcurrencyLimitError>()
                .is_some()
            {
                PluginError::Unavailable(format!("{e:#}"))
            } else {
                classify(e, &store, ctx.limits.fuel_per_row, &ctx.limits)
            }
        })?;
        let start_memory = store.data().meter.peak_memory;
        Ok(Instance {
            store,
            plugin,
            from: self.plugin.clone(),
            start_memory,
        })
    }

    /// Runs `call` over all `n` inputs in a warm instance (discarded if
    /// the sandbox stops the call).
    fn batched<T>(
        &self,
        n: usize,
        budget: u64,
        call: &Call<'_, T>,
        check: fn(&T) -> Result<usize, String>,
    ) -> Attempt<T> {
        if n == 0 {
            return Attempt::Done(Vec::new());
        }
        let error = match self.take_warm() {
            Ok(mut instance) => match self.call(&mut instance, 0..n, budget, call, check).0 {
                Ok(outcomes) => {
                    self.give_back(instance);
                    return Attempt::Done(outcomes);
                }
                Err(e) => e,
            },
            Err(e) => e,
        };
        self.note(&error);
        if n == 1 || !error.is_sandbox_failure() {
            return Attempt::Done((0..n).map(|_| Err(error.clone())).collect());
        }
        tracing::debug!(pipeline = %self.sandbox.inner.ctx.pipeline, error = %error, inputs = n, "batch stopped; its inputs will be retried one by one");
        Attempt::Stopped(error)
    }

    /// Runs `call` over input `i` alone, in a fresh instance.
    fn one<T>(
        &self,
        i: usize,
        budget: u64,
        call: &Call<'_, T>,
        check: fn(&T) -> Result<usize, String>,
    ) -> Outcome<T> {
        let result = self
            .fresh(i..i + 1, budget, call, check, false)
            .0
            .map(|mut one| one.pop().unwrap_or_else(|| Ok(Vec::new())));
        result.unwrap_or_else(|e| {
            self.note(&e);
            Err(e)
        })
    }

    /// A call that spent its whole CPU allowance makes the pipeline heavy.
    fn note(&self, error: &PluginError) {
        if error.used_up_cpu() {
            self.sandbox.inner.cpu.mark_heavy();
        }
    }

    /// One call over `range` in a fresh instance (see [`Session::call`]),
    /// timed ([`Usage::timing`]) if asked.
    pub(super) fn fresh<T>(
        &self,
        range: Range<usize>,
        budget: u64,
        call: &Call<'_, T>,
        check: fn(&T) -> Result<usize, String>,
        timed: bool,
    ) -> (Result<Vec<Outcome<T>>, PluginError>, Usage) {
        match self.instantiate() {
            Ok(mut instance) => {
                if timed {
                    StoreState::time_calls(&mut instance.store);
                }
                self.call(&mut instance, range, budget, call, check)
            }
            Err(e) => (Err(e), Usage::default()),
        }
    }

    /// Where a warm call over `batch` spends its time ([`Timing`]): the
    /// batch through `process` (0.2; `map-rows` for 0.1) twice in one fresh
    /// instance, the second call timed. For the benchmarks: the pipelines'
    /// calls are not timed.
    pub fn time_batch(&self, batch: &RowBatch) -> Result<super::Timing, PluginError> {
        let limits = self.limits();
        let budget = batch.rows.iter().map(|r| limits.budget(row_size(r))).sum();
        if self.contract().crosses_once() {
            self.time_twice(
                batch.rows.len(),
                budget,
                &*process_call(batch),
                check_decided,
            )
        } else {
            self.time_twice(batch.rows.len(), budget, &*map_call(batch), check_event)
        }
    }

    fn time_twice<T>(
        &self,
        n: usize,
        budget: u64,
        call: &Call<'_, T>,
        check: fn(&T) -> Result<usize, String>,
    ) -> Result<super::Timing, PluginError> {
        let mut instance = self.instantiate()?;
        self.call(&mut instance, 0..n, budget, call, check).0?;
        StoreState::time_calls(&mut instance.store);
        let (answer, usage) = self.call(&mut instance, 0..n, budget, call, check);
        answer?;
        Ok(usage.timing.unwrap_or_default())
    }

    /// One call over `range` with `budget` fuel (the sum of its inputs'
    /// [`Limits::budget`]): its outcomes, or why the sandbox stopped it, and what it used either way (a row that
    /// ran out of fuel used its whole budget, which `plugin test` shows).
    fn call<T>(
        &self,
        instance: &mut Instance,
        range: Range<usize>,
        budget: u64,
        call: &Call<'_, T>,
        check: fn(&T) -> Result<usize, String>,
    ) -> (Result<Vec<Outcome<T>>, PluginError>, Usage) {
        let n = range.len();
        let limits = &self.sandbox.inner.ctx.limits;
        let store = &mut instance.store;
        if let Err(e) = arm(store, budget, limits, n as u64) {
            return (Err(e), Usage::default());
        }
        let started = std::time::Instant::now();
        let answer = call(&instance.plugin, store, range);
        let wall = started.elapsed();
        store.data().finish_call();
        let used = budget - store.get_fuel().unwrap_or(0);
        self.sandbox.inner.cpu.record(used, budget);
        let checking = std::time::Instant::now();
        let outcomes = answer
            .map_err(|e| classify(e, store, budget, limits))
            .and_then(|answer| outcomes(answer, n, limits.output_bytes_per_row, check));
        let usage = Usage {
            fuel: used,
            budget,
            peak_memory: store.data().meter.peak_memory,
            map: None,
            timing: (store.data().clock.as_ref()).map(|c| c.timing(wall, checking.elapsed())),
        };
        (outcomes, usage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::contract::{GuestError, Instant, WebhookRequest};

    fn event(id: &str) -> Event {
        Event {
            id: id.into(),
            timestamp: Instant {
                seconds: 0,
                nanos: 0,
            },
            body: "{}".into(),
        }
    }

    fn webhook(body: &str) -> Action {
        Action::Webhook(WebhookRequest {
            target: "hook".into(),
            body: body.into(),
        })
    }

    #[test]
    fn a_02_answer_keeps_its_events_and_fails_only_the_decision_a_bad_action_spoils() {
        let answer = vec![
            DecidedEvent {
                event: event(""),
                actions: Ok(vec![webhook("{\"ok\":1}")]),
            },
            DecidedEvent {
                event: event("own"),
                actions: Ok(vec![webhook("{\"ok\":1}"), webhook("not json")]),
            },
            DecidedEvent {
                event: event(""),
                actions: Err(GuestError::Reject("no".into())),
            },
        ];
        let row = decided("7@1", Ok(answer)).unwrap();
        assert_eq!(row.len(), 3, "every event stays");
        assert_eq!(row[0].event.id, super::super::derived_id("7@1", 0));
        assert_eq!(row[0].actions.as_ref().unwrap().len(), 1);
        assert_eq!(row[1].event.id, "own", "a plugin's own id is kept");
        assert!(
            matches!(&row[1].actions, Err(PluginError::Contract(m)) if m.contains("webhook body")),
            "{:?}",
            row[1].actions
        );
        assert_eq!(row[2].event.id, super::super::derived_id("7@1", 2));
        assert_eq!(row[2].actions, Err(PluginError::Reject("no".into())));
        // A failed row stays failed.
        let failed = decided("7@1", Err(PluginError::Reject("row".into())));
        assert_eq!(failed, Err(PluginError::Reject("row".into())));
    }

    #[test]
    fn derived_ids_are_the_documented_hash() {
        // `printf '7@1#0' | sha256sum`
        assert_eq!(
            super::super::derived_id("7@1", 0),
            "8d3b5e3914aaf74000a57b7bdf38a2a4f780cbd9ca97d054df6065e9d7a654cf"
        );
        assert_ne!(
            super::super::derived_id("7@1", 1),
            super::super::derived_id("7@1", 0)
        );
    }
}
