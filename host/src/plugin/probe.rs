//! `freshet plugin test`'s view of a sandbox: one row mapped and decided
//! alone, each call in a fresh instance (one `process` call for a 0.2
//! plugin; `map-rows`, then `decide` per event, for 0.1), with what the
//! calls used and where their time went.

use super::call::{decide_call, event_size, map_call, process_call, row_size};
use super::check::{check_action, check_decided, check_event};
use super::contract::{Action, Event, Row, RowBatch};
use super::sandbox::{decided, fill_ids, Outcome, Sandbox};
use super::{PluginError, Usage};
use std::time::{Duration, Instant};

/// What one row produced in [`Sandbox::probe`]: its events, and each event's
/// actions (or why deciding failed).
pub type Probe = (Vec<Event>, Vec<Outcome<Action>>);

impl Sandbox {
    /// Maps and decides one row alone, each call in a fresh instance, and
    /// reports what the calls used. For `freshet plugin test`.
    pub fn probe(&self, columns: &[String], row: &Row) -> (Result<Probe, PluginError>, Usage) {
        let session = self.session();
        let batch = RowBatch {
            columns: columns.to_vec(),
            rows: vec![row.clone()],
        };
        let budget = session.limits().budget(row_size(row));
        if session.contract().crosses_once() {
            // One call: the row's events and their actions.
            let (answer, mut usage) =
                session.fresh(0..1, budget, &*process_call(&batch), check_decided, true);
            usage.map = Some((usage.fuel, usage.budget));
            let outcome = match answer {
                Ok(mut outcomes) => outcomes.pop().unwrap_or_else(|| Ok(Vec::new())),
                Err(e) => Err(e),
            };
            let started = Instant::now();
            let probe = decided(&row.identity, outcome)
                .map(|all| all.into_iter().map(|d| (d.event, d.actions)).unzip());
            host_work(&mut usage, started.elapsed());
            return (probe, usage);
        }
        let (mapped, mut usage) =
            session.fresh(0..1, budget, &*map_call(&batch), check_event, true);
        usage.map = Some((usage.fuel, usage.budget));
        let mut outcomes = match mapped {
            Ok(outcomes) => outcomes,
            Err(e) => return (Err(e), usage),
        };
        let mut outcome = outcomes.pop().unwrap_or_else(|| Ok(Vec::new()));
        let started = Instant::now();
        fill_ids(&row.identity, &mut outcome, |e| e);
        host_work(&mut usage, started.elapsed());
        let events = match outcome {
            Ok(events) => events,
            Err(e) => return (Err(e), usage),
        };
        let mut actions = Vec::with_capacity(events.len());
        for event in &events {
            let one = std::slice::from_ref(event);
            let budget = session.limits().budget(event_size(event));
            let (decided, used) =
                session.fresh(0..1, budget, &decide_call(one), check_action, true);
            usage.fuel += used.fuel;
            usage.budget += used.budget;
            usage.peak_memory = usage.peak_memory.max(used.peak_memory);
            usage.timing = match (usage.timing, used.timing) {
                (Some(a), Some(b)) => Some(a + b),
                (a, b) => a.or(b),
            };
            actions.push(match decided {
                Ok(mut out) => out.pop().unwrap_or_else(|| Ok(Vec::new())),
                Err(e) => Err(e),
            });
        }
        (Ok((events, actions)), usage)
    }
}

/// Host work after a call (deriving ids, splitting decisions) counts as the
/// host's time.
fn host_work(usage: &mut Usage, took: Duration) {
    if let Some(timing) = &mut usage.timing {
        timing.host += took;
    }
}
