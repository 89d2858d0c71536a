//! One page, start to finish: map and decide in the sandbox, deliver the
//! events, run the actions of the delivered ones, and commit — outcomes,
//! dead letters and the new offset in one transaction. The page travels as
//! one [`PageWork`] record; each step fills its part.

use super::ledger::{self, Rerun};
use super::work::{ActionWork, EventWork, PageWork, RowWork};
use super::{Pipeline, Stats};
use crate::cluster::Hold;
use crate::deliver::{Delivery, Message};
use crate::plugin::calls::{self, batches, unshare, Runner};
use crate::plugin::contract::{Action, Event, Row, RowBatch};
use crate::plugin::scheduler::{CpuMeter, Scheduler};
use crate::plugin::{Outcome, PluginError};
use crate::profile::{Profile, Stage};
use crate::source::{Cursor, Page};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Runs plugin calls on the plugin threads, in the class the pipeline's
/// recent CPU use earns it and in its tenant's turn (see
/// [`crate::plugin::scheduler`]).
struct Scheduled<'a> {
    scheduler: &'a Scheduler,
    tenant: &'a Arc<str>,
    cpu: &'a Arc<CpuMeter>,
    profile: &'a Arc<Profile>,
}

impl Runner for Scheduled<'_> {
    fn run<R: Send + 'static>(
        &self,
        job: impl FnOnce() -> R + Send + 'static,
    ) -> impl std::future::Future<Output = R> + Send {
        let profile = self.profile.clone();
        self.scheduler.run(self.tenant, self.cpu, move || {
            profile.time(Stage::Plugin, job)
        })
    }
}

/// A failure that is the host's, not the input's: no instance could be made.
fn unavailable<T>(outcomes: &[Result<T, PluginError>]) -> Option<&PluginError> {
    outcomes.iter().find_map(is_unavailable)
}

fn is_unavailable<T>(outcome: &Result<T, PluginError>) -> Option<&PluginError> {
    match outcome {
        Err(e @ PluginError::Unavailable(_)) => Some(e),
        _ => None,
    }
}

impl Pipeline {
    /// Runs the plugin over a page; `None` for an empty page. Fails, so
    /// the page is read again later, if no instance could be made or `stop`
    /// came.
    pub(super) async fn map_page(
        &self,
        page: Page,
        stop: &CancellationToken,
        profile: &Arc<Profile>,
    ) -> anyhow::Result<Option<PageWork>> {
        let read_at = std::time::Instant::now();
        let Some(last) = page.rows.last().map(|r| r.cursor.clone()) else {
            return Ok(None);
        };
        let stamps = match self.control.metrics {
            Some(_) => page.rows.iter().map(|r| r.cursor.ts).collect(),
            None => Vec::new(),
        };
        let columns = self.source.columns().to_vec();
        let runner = Scheduled {
            scheduler: &self.scheduler,
            tenant: &self.sandbox.context().tenant,
            cpu: self.sandbox.cpu(),
            profile,
        };
        // Every call of the page runs the version current now.
        let session = self.sandbox.session();
        let rows: Vec<Row> = page.rows.into_iter().map(|r| r.row).collect();
        let row_batches: Vec<Arc<RowBatch>> = batches(rows, self.batch_size)
            .into_iter()
            .map(|rows| {
                let columns = columns.clone();
                Arc::new(RowBatch { columns, rows })
            })
            .collect();
        let decided = calls::process(
            &session,
            &row_batches,
            self.batch_size,
            self.actions,
            &runner,
            stop,
        )
        .await?;
        // No instance for a row's call or for an event's `decide` (0.1) is
        // the host's failure, not the input's: the page is read again.
        let mut decisions = decided.iter().flatten().flatten().map(|d| &d.actions);
        if let Some(e) = unavailable(&decided).or_else(|| decisions.find_map(is_unavailable)) {
            anyhow::bail!("{e}");
        }
        let rows = unshare(row_batches).flat_map(|b| b.rows);
        let rows = rows
            .zip(decided)
            .map(|(row, outcome)| {
                let result = outcome.map(|decided| {
                    let events = decided.into_iter();
                    events
                        .map(|d| self.event_work(&row.identity, d.event, d.actions))
                        .collect()
                });
                RowWork { row, result }
            })
            .collect();
        Ok(Some(PageWork {
            last,
            version: session.version().to_owned(),
            columns,
            rows,
            read_at,
            stamps,
        }))
    }

    /// An event and its decision, its actions keyed.
    fn event_work(&self, identity: &str, event: Event, decision: Outcome<Action>) -> EventWork {
        let decision =
            decision.map(|actions| ActionWork::keyed(&self.name, identity, &event.id, actions));
        EventWork {
            event,
            decision,
            envelope: String::new(),
            delivery: None,
        }
    }

    /// Runs a delivered page's actions and commits; returns the committed
    /// cursor and adds the page's counters to `total`.
    pub(super) async fn finish(
        &self,
        mut work: PageWork,
        lease: Option<&Hold>,
        profile: &Arc<Profile>,
        total: &mut Stats,
    ) -> anyhow::Result<Cursor> {
        if let Some(lease) = lease {
            lease.check()?;
        }
        let actions = work.deliverable_actions();
        let run = ledger::run(
            &self.state,
            &self.name,
            &self.executors,
            actions,
            Rerun::Nothing,
        );
        profile.measure(Stage::Actions, run).await?;
        // Counted apart and added only once committed: the counters say what
        // is done, not what was attempted.
        let mut page = Stats::default();
        let last = work.last.clone();
        let (read_at, stamps) = (work.read_at, std::mem::take(&mut work.stamps));
        let actions = match self.control.metrics {
            Some(_) => work.action_tally(),
            None => Vec::new(),
        };
        let mut commit = profile.time(Stage::PageRecord, || work.settle(&mut page))?;
        commit.fence = lease.map(Hold::fence);
        let codes: Vec<String> = match self.control.metrics {
            Some(_) => commit.dead_letters.iter().map(|d| d.code.clone()).collect(),
            None => Vec::new(),
        };
        let (state, name) = (self.state.clone(), self.name.clone());
        crate::profile::spawn_blocking(Stage::Commit, move || state.commit(&name, &commit))
            .await??;
        page.pages = 1;
        total.add(&page);
        if let Some(metrics) = &self.control.metrics {
            let now = crate::source::Timestamp::now();
            let ages: Vec<f64> = stamps
                .iter()
                .map(|ts| now.0.saturating_sub(ts.0) as f64 / 1e9)
                .collect();
            let codes: Vec<&str> = codes.iter().map(String::as_str).collect();
            metrics.committed(&crate::metrics::PageFigures {
                rows: page.rows,
                delivered: page.delivered,
                refused: page.rejected,
                actions: &actions,
                dead_letters: &codes,
                plugin_errors: &page.plugin_errors,
                latency: read_at.elapsed(),
                row_ages: &ages,
                instances: self.sandbox.warm_instances(),
            });
        }
        self.control.committed(last.to_string(), total);
        Ok(last)
    }

    /// Renders every event's envelope, delivers them, and records what the
    /// destination did with each (keeping the envelopes it refused).
    pub(super) async fn deliver(
        &self,
        work: &mut PageWork,
        lease: Option<&Hold>,
        profile: &Profile,
    ) -> anyhow::Result<()> {
        if let Some(lease) = lease {
            lease.check()?;
        }
        let version = &work.version;
        let messages: Vec<Message> = profile.time(Stage::Envelopes, || {
            let events = work.rows.iter().flat_map(|r| r.result.iter().flatten());
            events
                .map(|event| Message {
                    json: self.envelopes.render(&event.event, version),
                })
                .collect()
        });
        let deliveries = profile
            .measure(Stage::Delivery, self.sink.deliver(&messages))
            .await?;
        anyhow::ensure!(
            deliveries.len() == messages.len(),
            "the destination answered {} times for {} events",
            deliveries.len(),
            messages.len()
        );
        for ((event, delivery), message) in work.events_mut().zip(deliveries).zip(messages) {
            if matches!(delivery, Delivery::Rejected { .. }) {
                event.envelope = message.json;
            }
            event.delivery = Some(delivery);
        }
        Ok(())
    }
}
