//! One pipeline's sandbox: its current plugin (swappable while running), a
//! warm instance reused from call to call, and calls under the pipeline's
//! limits.
//!
//! Every call gets a fresh budget (fuel, epoch deadline, log bytes); the
//! store's memory and table caps hold throughout. The warm instance is
//! discarded after any failure the sandbox stopped, so a trap never leaves a
//! broken instance behind, and a batch whose call was stopped is retried
//! input by input in fresh instances so only the guilty inputs fail.

use super::bindings::PipelinePlugin;
use super::check::{check_action, check_event};
use super::contract::{Action, Event, GuestError, Row, RowBatch, Value};
use super::runtime::{Plugin, EPOCH_TICK};
use super::scheduler::CpuMeter;
use super::store::StoreState;
use super::{CallContext, Limits, PluginError, Usage};
use std::ops::Range;
use std::sync::{Arc, Mutex};
use wasmtime::Store;

/// One input's answer: the outputs, or why it failed.
pub type Outcome<T> = Result<Vec<T>, PluginError>;

/// What one row produced in [`Sandbox::probe`]: its events, and each event's
/// actions (or why deciding failed).
pub type Probe = (Vec<Event>, Vec<Outcome<Action>>);

/// A live instance, its store, and the plugin it was made from.
struct Instance {
    store: Store<StoreState>,
    plugin: PipelinePlugin,
    from: Plugin,
}

/// A call into an instance over a range of the inputs.
type Call<'a, T> = dyn Fn(&PipelinePlugin, &mut Store<StoreState>, Range<usize>) -> Answer<T> + 'a;

/// What an export answers: one result per input, or a trap.
type Answer<T> = wasmtime::Result<Vec<Result<Vec<T>, GuestError>>>;

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
    warm: Mutex<Option<Instance>>,
    cpu: Arc<CpuMeter>,
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
/// guilty ones. The pipeline schedules each retry as a call of its own, so a
/// plugin that burns its budget is moved to background priority between
/// them.
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
                warm: Mutex::new(None),
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

    /// Drops the warm instance (the pipeline is idle): its pooled slot and
    /// memory go back to the engine.
    pub fn release(&self) {
        self.inner
            .warm
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
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

    /// Maps and decides one row alone, each call in a fresh instance, and
    /// reports what the calls used. For `freshet plugin test`.
    pub fn probe(&self, columns: &[String], row: &Row) -> (Result<Probe, PluginError>, Usage) {
        let session = self.session();
        let batch = RowBatch {
            columns: columns.to_vec(),
            rows: vec![row.clone()],
        };
        let (mapped, mut usage) =
            session.fresh(0..1, &|p, s, _| p.call_map_rows(s, &batch), check_event);
        let mut outcomes = match mapped {
            Ok(outcomes) => outcomes,
            Err(e) => return (Err(e), usage),
        };
        let events = match outcomes.pop() {
            Some(Ok(events)) => events,
            Some(Err(e)) => return (Err(e), usage),
            None => Vec::new(),
        };
        let mut actions = Vec::with_capacity(events.len());
        for event in &events {
            let one = std::slice::from_ref(event);
            let (decided, used) =
                session.fresh(0..1, &|p, s, _| p.call_decide(s, one), check_action);
            usage.fuel += used.fuel;
            usage.peak_memory = usage.peak_memory.max(used.peak_memory);
            actions.push(match decided {
                Ok(mut out) => out.pop().unwrap_or_else(|| Ok(Vec::new())),
                Err(e) => Err(e),
            });
        }
        (Ok((events, actions)), usage)
    }
}

impl Session {
    /// The version (content hash) this session's calls run.
    pub fn version(&self) -> &str {
        self.plugin.version()
    }

    /// Maps rows to events: one outcome per row, in order; a batch the
    /// sandbox stopped is retried row by row here.
    pub fn map_rows(&self, batch: &RowBatch) -> Vec<Outcome<Event>> {
        match self.try_map_rows(batch) {
            Attempt::Done(outcomes) => outcomes,
            Attempt::Stopped(_) => (0..batch.rows.len())
                .map(|i| self.map_row(batch, i))
                .collect(),
        }
    }

    /// Decides the actions for events: one outcome per event, in order; a
    /// batch the sandbox stopped is retried event by event here.
    pub fn decide(&self, events: &[Event]) -> Vec<Outcome<Action>> {
        match self.try_decide(events) {
            Attempt::Done(outcomes) => outcomes,
            Attempt::Stopped(_) => events.iter().map(|e| self.decide_one(e)).collect(),
        }
    }

    /// Makes the warm instance of this session's plugin, if there is none.
    pub fn warm_up(&self) -> Result<(), PluginError> {
        let mut slot = self
            .sandbox
            .inner
            .warm
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if !matches!(&*slot, Some(instance) if instance.from.same(&self.plugin)) {
            *slot = Some(self.instantiate()?);
        }
        Ok(())
    }

    /// Maps a batch in one call in the warm instance. Rows over the input
    /// limit fail without reaching the plugin.
    pub fn try_map_rows(&self, batch: &RowBatch) -> Attempt<Event> {
        let limit = self.sandbox.inner.ctx.limits.input_bytes_per_row;
        let sizes: Vec<usize> = batch.rows.iter().map(row_size).collect();
        if sizes.iter().all(|&s| s as u64 <= limit) {
            return self.batched(batch.rows.len(), &map_call(batch), check_event);
        }
        let fitting = RowBatch {
            columns: batch.columns.clone(),
            rows: (batch.rows.iter().zip(&sizes))
                .filter(|(_, &s)| s as u64 <= limit)
                .map(|(r, _)| r.clone())
                .collect(),
        };
        let mapped = match self.batched(fitting.rows.len(), &map_call(&fitting), check_event) {
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

    /// Maps row `i` of `batch` alone, in a fresh instance.
    pub fn map_row(&self, batch: &RowBatch, i: usize) -> Outcome<Event> {
        let limit = self.sandbox.inner.ctx.limits.input_bytes_per_row;
        let size = row_size(&batch.rows[i]);
        if size as u64 > limit {
            return Err(PluginError::InputTooLarge { size, limit });
        }
        self.one(i, &map_call(batch), check_event)
    }

    /// Decides a batch of events in one call in the warm instance.
    pub fn try_decide(&self, events: &[Event]) -> Attempt<Action> {
        self.batched(events.len(), &decide_call(events), check_action)
    }

    /// Decides one event alone, in a fresh instance.
    pub fn decide_one(&self, event: &Event) -> Outcome<Action> {
        let one = std::slice::from_ref(event);
        self.one(0, &decide_call(one), check_action)
    }

    /// A fresh instance in a fresh store; its start-up runs under the budget
    /// of one row.
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
        Ok(Instance {
            store,
            plugin,
            from: self.plugin.clone(),
        })
    }

    /// Runs `call` over all `n` inputs in the warm instance (discarded if
    /// the sandbox stops the call).
    fn batched<T>(
        &self,
        n: usize,
        call: &Call<'_, T>,
        check: fn(&T) -> Result<usize, String>,
    ) -> Attempt<T> {
        if n == 0 {
            return Attempt::Done(Vec::new());
        }
        let mut slot = self
            .sandbox
            .inner
            .warm
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let warm = match slot.take() {
            Some(instance) if instance.from.same(&self.plugin) => Ok(instance),
            _ => self.instantiate(),
        };
        let error = match warm {
            Ok(mut instance) => match self.call(&mut instance, 0..n, call, check).0 {
                Ok(outcomes) => {
                    *slot = Some(instance);
                    return Attempt::Done(outcomes);
                }
                Err(e) => e,
            },
            Err(e) => e,
        };
        drop(slot);
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
        call: &Call<'_, T>,
        check: fn(&T) -> Result<usize, String>,
    ) -> Outcome<T> {
        let result = self
            .fresh(i..i + 1, call, check)
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

    /// One call over `range` in a fresh instance (see [`Session::call`]).
    fn fresh<T>(
        &self,
        range: Range<usize>,
        call: &Call<'_, T>,
        check: fn(&T) -> Result<usize, String>,
    ) -> (Result<Vec<Outcome<T>>, PluginError>, Usage) {
        match self.instantiate() {
            Ok(mut instance) => self.call(&mut instance, range, call, check),
            Err(e) => (Err(e), Usage::default()),
        }
    }

    /// One call with a budget for `range.len()` inputs: its outcomes, or
    /// why the sandbox stopped it, and what it used either way (a row that
    /// ran out of fuel used its whole budget, which `plugin test` shows).
    fn call<T>(
        &self,
        instance: &mut Instance,
        range: Range<usize>,
        call: &Call<'_, T>,
        check: fn(&T) -> Result<usize, String>,
    ) -> (Result<Vec<Outcome<T>>, PluginError>, Usage) {
        let n = range.len();
        let limits = &self.sandbox.inner.ctx.limits;
        let budget = limits.fuel_per_row.saturating_mul(n as u64);
        let store = &mut instance.store;
        if let Err(e) = arm(store, budget, limits, n as u64) {
            return (Err(e), Usage::default());
        }
        let answer = call(&instance.plugin, store, range);
        store.data().finish_call();
        let used = budget - store.get_fuel().unwrap_or(0);
        self.sandbox.inner.cpu.record(used, budget);
        let usage = Usage {
            fuel: used,
            peak_memory: store.data().meter.peak_memory,
        };
        let outcomes = answer
            .map_err(|e| classify(e, store, budget, limits))
            .and_then(|answer| outcomes(answer, n, limits.output_bytes_per_row, check));
        (outcomes, usage)
    }
}

/// The answer of a call over `n` inputs, checked: one result per input,
/// each output well formed, each input's outputs within `limit` bytes.
fn outcomes<T>(
    answer: Vec<Result<Vec<T>, GuestError>>,
    n: usize,
    limit: u64,
    check: fn(&T) -> Result<usize, String>,
) -> Result<Vec<Outcome<T>>, PluginError> {
    if answer.len() != n {
        return Err(PluginError::Contract(format!(
            "answered {} results for {n} inputs",
            answer.len()
        )));
    }
    let checked = |result: Result<Vec<T>, GuestError>| {
        let outputs = result.map_err(|e| match e {
            GuestError::Reject(reason) => PluginError::Reject(reason),
            GuestError::Internal(reason) => PluginError::Guest(reason),
        })?;
        let mut size = 0usize;
        for output in &outputs {
            size += check(output).map_err(PluginError::Contract)?;
        }
        if size as u64 > limit {
            return Err(PluginError::OutputTooLarge { size, limit });
        }
        Ok(outputs)
    };
    Ok(answer.into_iter().map(checked).collect())
}

/// `map-rows` over `batch`, or over a range of it.
fn map_call(
    batch: &RowBatch,
) -> impl Fn(&PipelinePlugin, &mut Store<StoreState>, Range<usize>) -> Answer<Event> + '_ {
    move |plugin, store, range| {
        if range.len() == batch.rows.len() {
            plugin.call_map_rows(store, batch)
        } else {
            let sub = RowBatch {
                columns: batch.columns.clone(),
                rows: batch.rows[range].to_vec(),
            };
            plugin.call_map_rows(store, &sub)
        }
    }
}

/// `decide` over a range of `events`.
fn decide_call(
    events: &[Event],
) -> impl Fn(&PipelinePlugin, &mut Store<StoreState>, Range<usize>) -> Answer<Action> + '_ {
    move |plugin, store, range| plugin.call_decide(store, &events[range])
}

/// The bytes a row brings into the sandbox: its identity and cells.
fn row_size(row: &Row) -> usize {
    row.identity.len()
        + row
            .cells
            .iter()
            .map(|cell| match cell {
                Value::Text(s) | Value::Decimal(s) | Value::Json(s) => s.len(),
                Value::Binary(b) => b.len(),
                _ => 8,
            })
            .sum::<usize>()
}

/// Gives a store its budget for one call over `inputs` inputs: fuel, the
/// epoch deadline, a fresh log budget and a clean record of denied growth.
fn arm(
    store: &mut Store<StoreState>,
    fuel: u64,
    limits: &Limits,
    inputs: u64,
) -> Result<(), PluginError> {
    store
        .set_fuel(fuel)
        .map_err(|e| PluginError::Trap(e.to_string()))?;
    store.set_epoch_deadline(limits.timeout_ms.div_ceil(EPOCH_TICK.as_millis() as u64) + 1);
    store.epoch_deadline_trap();
    store.data_mut().begin_call(limits, inputs);
    Ok(())
}

/// Names a failed call for what stopped it.
fn classify(
    err: wasmtime::Error,
    store: &Store<StoreState>,
    budget: u64,
    limits: &Limits,
) -> PluginError {
    let meter = &store.data().meter;
    match err.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::OutOfFuel) => return PluginError::OutOfFuel { budget },
        Some(wasmtime::Trap::Interrupt) => return PluginError::Timeout(limits.timeout()),
        _ => {}
    }
    if let Some(limit) = meter.log_exceeded {
        return PluginError::LogExceeded { limit };
    }
    // A refused `memory.grow` returns -1 to the guest, whose allocator then
    // aborts with a trap of its own: name the cause, not the symptom.
    if let Some(requested) = meter.memory_denied {
        return PluginError::MemoryExceeded {
            requested,
            cap: meter.memory_cap(),
        };
    }
    if let Some(requested) = meter.table_denied {
        return PluginError::TableExceeded { requested };
    }
    PluginError::Trap(format!("{err:#}"))
}
