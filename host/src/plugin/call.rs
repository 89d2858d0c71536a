//! One call into an instance: the exports as calls over a range of their
//! inputs, the budget a call is armed with, the checks on its answer, and
//! the name of whatever stopped it.

use super::contract::{Action, DecidedEvent, Event, GuestError, Row, RowBatch, Value};
use super::runtime::Bound;
use super::runtime::EPOCH_TICK;
use super::sandbox::Outcome;
use super::store::StoreState;
use super::{Limits, PluginError};
use std::ops::Range;
use wasmtime::Store;

/// A call into an instance over a range of the inputs.
pub(super) type Call<'a, T> =
    dyn Fn(&Bound, &mut Store<StoreState>, Range<usize>) -> Answer<T> + 'a;

/// What an export answers: one result per input, or a trap.
pub(super) type Answer<T> = wasmtime::Result<Vec<Result<Vec<T>, GuestError>>>;

/// The answer of a call over `n` inputs, checked: one result per input,
/// each output well formed, each input's outputs within `limit` bytes.
pub(super) fn outcomes<T>(
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
        let outputs = result.map_err(guest_error)?;
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

/// What the plugin said was wrong with an input, as the host names it.
pub(super) fn guest_error(e: GuestError) -> PluginError {
    match e {
        GuestError::Reject(reason) => PluginError::Reject(reason),
        GuestError::Internal(reason) => PluginError::Guest(reason),
    }
}

/// `batch`, or the range of its rows.
fn rows_of(batch: &RowBatch, range: Range<usize>) -> std::borrow::Cow<'_, RowBatch> {
    if range.len() == batch.rows.len() {
        std::borrow::Cow::Borrowed(batch)
    } else {
        std::borrow::Cow::Owned(RowBatch {
            columns: batch.columns.clone(),
            rows: batch.rows[range].to_vec(),
        })
    }
}

/// A call to an export the instance's contract does not have: the host
/// chose the wrong path (a bug), reported as a trap of the call.
fn missing(export: &str) -> wasmtime::Error {
    wasmtime::format_err!("the plugin's contract has no `{export}` export")
}

/// An export over rows, as a [`Call`] over a batch of them.
pub(super) type RowsCall<T> = fn(&RowBatch) -> Box<Call<'_, T>>;

/// `map-rows` (contract 0.1) over `batch`, or over a range of it.
pub(super) fn map_call(batch: &RowBatch) -> Box<Call<'_, Event>> {
    Box::new(move |plugin, store, range| match plugin {
        Bound::V0_1(p) => p.call_map_rows(store, &rows_of(batch, range)),
        Bound::V0_2(_) | Bound::Json(_) => Err(missing("map-rows")),
    })
}

/// `process` (contract 0.2) over `batch`, or over a range of it.
pub(super) fn process_call(batch: &RowBatch) -> Box<Call<'_, DecidedEvent>> {
    process_with(batch, true)
}

/// `process` asked for events only (`decide` false).
pub(super) fn events_call(batch: &RowBatch) -> Box<Call<'_, DecidedEvent>> {
    process_with(batch, false)
}

fn process_with(batch: &RowBatch, decide: bool) -> Box<Call<'_, DecidedEvent>> {
    Box::new(move |plugin, store, range| match plugin {
        Bound::V0_2(p) => p.call_process(store, &rows_of(batch, range), decide),
        Bound::Json(p) => {
            let n = range.len();
            let document = super::json::encode_batch(&batch.columns, &batch.rows[range]);
            let answer = p.call_process_json(store, &document, decide)?;
            Ok(super::json::decode_answer(&answer, n))
        }
        Bound::V0_1(_) => Err(missing("process")),
    })
}

/// `decide` (either contract) over a range of `events`.
pub(super) fn decide_call(
    events: &[Event],
) -> impl Fn(&Bound, &mut Store<StoreState>, Range<usize>) -> Answer<Action> + '_ {
    move |plugin, store, range| match plugin {
        Bound::V0_1(p) => p.call_decide(store, &events[range]),
        Bound::V0_2(p) => p.call_decide(store, &events[range]),
        Bound::Json(p) => p.call_decide(store, &events[range]),
    }
}

/// The bytes an event brings into `decide`: its id and body.
pub(super) fn event_size(event: &Event) -> usize {
    event.id.len() + event.body.len()
}

/// The bytes a row brings into the sandbox: its identity and cells.
pub(super) fn row_size(row: &Row) -> usize {
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
pub(super) fn arm(
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
pub(super) fn classify(
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
