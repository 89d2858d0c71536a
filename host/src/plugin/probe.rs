//! `freshet plugin test`'s view of a sandbox: one row mapped and decided
//! alone, each call in a fresh instance (one `process` call for a 0.2
//! plugin; `map-rows`, then `decide` per event, for 0.1), with what the
//! calls used.

use super::call::{decide_call, event_size, map_call, process_call, row_size};
use super::check::{check_action, check_decided, check_event};
use super::contract::{Action, Event, Row, RowBatch, Version};
use super::sandbox::{decided, fill_ids, Outcome, Sandbox};
use super::{PluginError, Usage};

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
        if session.contract() == Version::V0_2 {
            // One call: the row's events and their actions.
            let (answer, mut usage) =
                session.fresh(0..1, budget, &*process_call(&batch), check_decided);
            usage.map = Some((usage.fuel, usage.budget));
            let outcome = match answer {
                Ok(mut outcomes) => outcomes.pop().unwrap_or_else(|| Ok(Vec::new())),
                Err(e) => Err(e),
            };
            let probe = decided(&row.identity, outcome)
                .map(|all| all.into_iter().map(|d| (d.event, d.actions)).unzip());
            return (probe, usage);
        }
        let (mapped, mut usage) = session.fresh(0..1, budget, &*map_call(&batch), check_event);
        usage.map = Some((usage.fuel, usage.budget));
        let mut outcomes = match mapped {
            Ok(outcomes) => outcomes,
            Err(e) => return (Err(e), usage),
        };
        let mut outcome = outcomes.pop().unwrap_or_else(|| Ok(Vec::new()));
        fill_ids(&row.identity, &mut outcome, |e| e);
        let events = match outcome {
            Ok(events) => events,
            Err(e) => return (Err(e), usage),
        };
        let mut actions = Vec::with_capacity(events.len());
        for event in &events {
            let one = std::slice::from_ref(event);
            let budget = session.limits().budget(event_size(event));
            let (decided, used) = session.fresh(0..1, budget, &decide_call(one), check_action);
            usage.fuel += used.fuel;
            usage.budget += used.budget;
            usage.peak_memory = usage.peak_memory.max(used.peak_memory);
            actions.push(match decided {
                Ok(mut out) => out.pop().unwrap_or_else(|| Ok(Vec::new())),
                Err(e) => Err(e),
            });
        }
        (Ok((events, actions)), usage)
    }
}
