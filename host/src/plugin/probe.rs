//! `freshet plugin test`'s view of a sandbox: one row mapped and decided
//! alone, each call in a fresh instance, with what the calls used.

use super::call::{event_size, row_size};
use super::check::{check_action, check_event};
use super::contract::{Action, Event, Row, RowBatch};
use super::sandbox::{Outcome, Sandbox};
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
        let (mapped, mut usage) = session.fresh(
            0..1,
            budget,
            &|p, s, _| p.call_map_rows(s, &batch),
            check_event,
        );
        usage.map = Some((usage.fuel, usage.budget));
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
            let budget = session.limits().budget(event_size(event));
            let (decided, used) =
                session.fresh(0..1, budget, &|p, s, _| p.call_decide(s, one), check_action);
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
