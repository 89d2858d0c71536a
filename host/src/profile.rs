//! Where a pipeline's CPU goes, stage by stage (`freshet run --profile`,
//! and `freshet bench`): each stage's work is timed on the CPU clock of the
//! thread doing it — a closure where it runs (plugin threads, the blocking
//! pool), a future across its polls — so concurrent stages on several
//! threads add up without counting each other's waiting. What no stage
//! claims (the runtime's scheduling, HTTP connection tasks, logging) is the
//! process's CPU less the stages', reported as `other`.
//!
//! Off unless asked for: every hook is then a check of one flag.

use serde::Serialize;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A stage of a page's way; its discriminant indexes [`STAGES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Page queries and their rows (and the source's clock).
    Source,
    /// Plugin calls, inside the sandbox (on the plugin threads).
    Plugin,
    /// The host's own work on the page record: batching for the plugin,
    /// keying actions, settling the page into its commit.
    PageRecord,
    /// Rendering AEP envelopes.
    Envelopes,
    /// Sending the events and reading the answers.
    Delivery,
    /// The ledger's lookups and marks, and the actions themselves.
    Actions,
    /// The page's commit to the state store.
    Commit,
}

/// Each stage with its name in the figures, in [`Stage`] order.
const STAGES: [(Stage, &str); 7] = [
    (Stage::Source, "source"),
    (Stage::Plugin, "plugin"),
    (Stage::PageRecord, "page_record"),
    (Stage::Envelopes, "envelopes"),
    (Stage::Delivery, "delivery"),
    (Stage::Actions, "actions"),
    (Stage::Commit, "commit"),
];

/// One pipeline's CPU time per stage, in nanoseconds.
#[derive(Debug, Default)]
pub struct Profile {
    on: bool,
    nanos: [AtomicU64; STAGES.len()],
}

/// This thread's CPU time so far.
fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// This process's CPU time so far, every thread's.
pub fn process_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

impl Profile {
    /// A profile that measures (`on`) or ignores every hook.
    pub fn new(on: bool) -> Arc<Self> {
        Arc::new(Self {
            on,
            ..Self::default()
        })
    }

    fn add(&self, stage: Stage, spent: Duration) {
        self.nanos[stage as usize].fetch_add(spent.as_nanos() as u64, Ordering::Relaxed);
    }

    /// Runs `work` here, its CPU time counted to `stage`.
    pub fn time<T>(&self, stage: Stage, work: impl FnOnce() -> T) -> T {
        if !self.on {
            return work();
        }
        let start = thread_cpu();
        let answer = work();
        self.add(stage, thread_cpu().saturating_sub(start));
        answer
    }

    /// Awaits `future`, the CPU time of its polls counted to `stage` (work
    /// it hands to other threads is not: those count where they run).
    pub async fn measure<F: Future>(&self, stage: Stage, future: F) -> F::Output {
        if !self.on {
            return future.await;
        }
        let mut future = std::pin::pin!(future);
        std::future::poll_fn(|cx| {
            let start = thread_cpu();
            let poll = future.as_mut().poll(cx);
            self.add(stage, thread_cpu().saturating_sub(start));
            poll
        })
        .await
    }

    /// Runs `fut` with this profile as the task's [`spawn_blocking`]
    /// profile.
    pub async fn scope<F: Future>(self: &Arc<Self>, fut: F) -> F::Output {
        CURRENT.scope(self.clone(), fut).await
    }

    /// The figures so far.
    pub fn snapshot(&self) -> StageCpu {
        StageCpu(std::array::from_fn(|i| {
            self.nanos[i].load(Ordering::Relaxed)
        }))
    }
}

tokio::task_local! {
    /// The profile of the pipeline task running: how code that does not
    /// know its pipeline (a source, the ledger) counts the work it hands to
    /// the blocking pool.
    static CURRENT: Arc<Profile>;
}

/// `tokio::task::spawn_blocking`, its CPU time counted to `stage` of the
/// calling task's profile (if it has one, see [`Profile::scope`]).
pub async fn spawn_blocking<T: Send + 'static>(
    stage: Stage,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, tokio::task::JoinError> {
    match CURRENT.try_with(Arc::clone) {
        Ok(profile) if profile.on => {
            tokio::task::spawn_blocking(move || profile.time(stage, work)).await
        }
        _ => tokio::task::spawn_blocking(work).await,
    }
}

/// CPU nanoseconds per stage, in [`Stage`] order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StageCpu(pub [u64; STAGES.len()]);

impl StageCpu {
    /// Adds another run's figures.
    pub fn add(&mut self, other: &StageCpu) {
        for (mine, theirs) in self.0.iter_mut().zip(other.0) {
            *mine += theirs;
        }
    }

    /// The stages' total.
    pub fn total(&self) -> Duration {
        Duration::from_nanos(self.0.iter().sum())
    }

    /// CPU seconds per million rows, per stage, and `other`: `process`
    /// (the process's CPU over the same run) less the stages'.
    pub fn per_million_rows(&self, rows: u64, process: Duration) -> PerMillionRows {
        let scale = 1e6 / rows.max(1) as f64;
        let seconds = |nanos: u64| (nanos as f64 / 1e9 * scale * 1e3).round() / 1e3;
        PerMillionRows {
            stages: STAGES
                .iter()
                .zip(self.0)
                .map(|((_, name), nanos)| (*name, seconds(nanos)))
                .collect(),
            other: seconds(process.saturating_sub(self.total()).as_nanos() as u64),
            total: seconds(process.as_nanos() as u64),
        }
    }
}

/// A run's profile in CPU seconds per million rows.
#[derive(Debug, Clone, Serialize)]
pub struct PerMillionRows {
    /// Per stage.
    #[serde(flatten)]
    pub stages: std::collections::BTreeMap<&'static str, f64>,
    /// What no stage claimed: the runtime, HTTP connections, logging.
    pub other: f64,
    /// The process's whole CPU time.
    pub total: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Burns CPU on this thread for about `d`.
    fn spin(d: Duration) {
        let start = thread_cpu();
        while thread_cpu() - start < d {
            std::hint::black_box(0u64.wrapping_add(1));
        }
    }

    #[tokio::test]
    async fn each_stage_gets_the_cpu_spent_in_it_wherever_it_ran() {
        let profile = Profile::new(true);
        profile.time(Stage::Envelopes, || spin(Duration::from_millis(20)));
        let blocking = spawn_blocking(Stage::Commit, || spin(Duration::from_millis(30)));
        profile.scope(blocking).await.unwrap();
        let polled = async { spin(Duration::from_millis(10)) };
        profile.measure(Stage::Delivery, polled).await;
        let cpu = profile.snapshot();
        let ms = |stage: Stage| cpu.0[stage as usize] / 1_000_000;
        assert!((20..40).contains(&ms(Stage::Envelopes)), "{cpu:?}");
        assert!((30..50).contains(&ms(Stage::Commit)), "{cpu:?}");
        assert!((10..30).contains(&ms(Stage::Delivery)), "{cpu:?}");
        assert_eq!(ms(Stage::Source) + ms(Stage::Plugin), 0);
    }

    #[tokio::test]
    async fn a_profile_that_is_off_counts_nothing() {
        let profile = Profile::new(false);
        profile.time(Stage::Envelopes, || spin(Duration::from_millis(5)));
        let blocking = spawn_blocking(Stage::Commit, || spin(Duration::from_millis(5)));
        profile.scope(blocking).await.unwrap();
        assert_eq!(profile.snapshot(), StageCpu::default());
    }

    #[test]
    fn the_names_are_in_stage_order() {
        for (i, (stage, _)) in STAGES.iter().enumerate() {
            assert_eq!(*stage as usize, i);
        }
    }

    #[test]
    fn figures_are_per_million_rows_and_other_is_what_no_stage_claimed() {
        let mut cpu = StageCpu::default();
        cpu.0[0] = 500_000_000; // source: 0.5 s
        cpu.0[1] = 1_000_000_000; // plugin: 1 s
        let figures = cpu.per_million_rows(500_000, Duration::from_secs(2));
        assert_eq!(figures.stages["source"], 1.0);
        assert_eq!(figures.stages["plugin"], 2.0);
        assert_eq!(figures.stages["commit"], 0.0);
        assert_eq!((figures.other, figures.total), (1.0, 4.0));
    }
}
