//! The live picture of each running pipeline (phase, cursor, counters, the
//! error it is retrying) and the controls an operator has over it (pause,
//! resume, switch its plugin). The pipeline writes its side as pages commit;
//! the admin API, `/readyz`, the status page and the metrics read it.

use crate::metrics::PipelineMetrics;
use crate::pipeline::Stats;
use crate::plugin::Sandbox;
use serde::Serialize;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// Where a pipeline stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Built, finding its first cursor.
    Starting,
    /// Polling and processing pages.
    Running,
    /// Asked to pause: finishing and committing the pages in flight.
    Pausing,
    /// Paused: reads nothing until resumed; its offset may be reset.
    Paused,
    /// The last page failed (source or destination unreachable): waiting to
    /// read again from the committed offset.
    Retrying,
    /// Stopped at shutdown (or, with `--once`, drained).
    Stopped,
    /// Stopped on an error retrying cannot fix.
    Failed,
    /// Not this host's: another host holds its lease, or none does yet
    /// (hosts sharing pipelines through PostgreSQL).
    Elsewhere,
}

/// A pipeline's status as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// Where it stands.
    pub phase: Phase,
    /// The committed offset, once known.
    pub cursor: Option<String>,
    /// Why it is retrying or failed.
    pub error: Option<String>,
    /// Counters since the host started.
    pub stats: Stats,
    /// How far the last poll was behind the source (0 when caught up).
    pub lag_seconds: f64,
    /// Rows left to read, when the pipeline is behind and the source says.
    pub lag_rows: Option<u64>,
    /// When the last page committed, epoch milliseconds.
    pub last_commit_ms: Option<i64>,
}

/// One pipeline's shared record: written by the pipeline, read and steered
/// by the operations surface. Cheap to share (`Arc`).
pub struct PipelineControl {
    /// The pipeline.
    pub name: Arc<str>,
    /// Its tenant.
    pub tenant: Arc<str>,
    /// Its sandbox: the plugin version in use, and where a switch lands.
    pub sandbox: Sandbox,
    /// Its metrics, when the host exports them.
    pub metrics: Option<PipelineMetrics>,
    /// The plugin file the hot-reload watcher follows (when it runs): a
    /// switched version points it at the stored file, so a later change to
    /// the config's file does not undo the switch.
    pub(crate) watched_plugin: Option<watch::Sender<PathBuf>>,
    /// The uploaded version it was switched to and runs (`None`: its
    /// config's file); kept with the switch in the state store.
    pinned: Mutex<Option<String>>,
    status: Mutex<Status>,
    pause: watch::Sender<bool>,
    /// Whether the retry under way is the source's.
    source_failing: std::sync::atomic::AtomicBool,
    /// Held by whoever steers the pipeline (pause, resume, offset reset,
    /// plugin switch), so two operators' calls never interleave.
    steering: tokio::sync::Mutex<()>,
}

impl PipelineControl {
    /// A pipeline's record, starting.
    pub fn new(
        name: Arc<str>,
        tenant: Arc<str>,
        sandbox: Sandbox,
        metrics: Option<PipelineMetrics>,
        watched_plugin: Option<watch::Sender<PathBuf>>,
        pinned: Option<String>,
    ) -> Self {
        Self {
            name,
            tenant,
            sandbox,
            metrics,
            watched_plugin,
            pinned: Mutex::new(pinned),
            status: Mutex::new(Status {
                phase: Phase::Starting,
                cursor: None,
                error: None,
                stats: Stats::default(),
                lag_seconds: 0.0,
                lag_rows: None,
                last_commit_ms: None,
            }),
            pause: watch::Sender::new(false),
            steering: tokio::sync::Mutex::new(()),
            source_failing: Default::default(),
        }
    }

    /// Waits for the steering lock: one operator call at a time.
    pub async fn steer(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.steering.lock().await
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A copy of the status now.
    pub fn status(&self) -> Status {
        self.lock().clone()
    }

    /// The uploaded version it runs, if it was switched to one.
    pub fn pinned(&self) -> Option<String> {
        self.pinned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// After a switch: the uploaded version it runs now, if any.
    pub fn set_pinned(&self, digest: Option<String>) {
        *self.pinned.lock().unwrap_or_else(|e| e.into_inner()) = digest;
    }

    /// The plugin version (content hash) new pages use.
    pub fn version(&self) -> String {
        self.sandbox.plugin().version().to_owned()
    }

    /// Moves to `phase`, with the error that caused it (if any).
    pub fn set_phase(&self, phase: Phase, error: Option<String>) {
        let mut status = self.lock();
        status.phase = phase;
        status.error = error;
        if let Some(m) = &self.metrics {
            let failing = matches!(phase, Phase::Retrying | Phase::Failed);
            m.phase(phase == Phase::Paused, failing);
        }
    }

    /// A failure retrying can fix: `source` when the source failed (the
    /// next answered poll ends it), else the next commit does.
    pub fn retrying(&self, error: String, source: bool) {
        self.set_phase(Phase::Retrying, Some(error));
        self.source_failing
            .store(source, std::sync::atomic::Ordering::Relaxed);
    }

    /// Ends a retry: the pipeline runs again.
    fn recovered(&self, status: &mut Status) {
        if status.phase == Phase::Retrying {
            status.phase = Phase::Running;
            status.error = None;
            if let Some(m) = &self.metrics {
                m.phase(false, false);
            }
        }
    }

    /// A poll answered: a pipeline retrying because its source failed runs
    /// again. `lag_rows` is `None` when the source was not asked (the last
    /// answer stands).
    pub fn polled(&self, lag_seconds: f64, lag_rows: Option<u64>) {
        let mut status = self.lock();
        if self
            .source_failing
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            self.recovered(&mut status);
        }
        status.lag_seconds = lag_seconds;
        if let Some(m) = &self.metrics {
            m.behind(lag_seconds, lag_rows);
        }
        if lag_rows.is_some() {
            status.lag_rows = lag_rows;
        }
    }

    /// Rows still to read while the pipeline catches up.
    pub fn rows_left(&self, rows: u64) {
        self.lock().lag_rows = Some(rows);
        if let Some(m) = &self.metrics {
            m.behind_rows(rows);
        }
    }

    /// A page committed: the new offset and the run's counters so far.
    pub fn committed(&self, cursor: String, stats: &Stats) {
        let mut status = self.lock();
        self.recovered(&mut status);
        status.cursor = Some(cursor);
        status.stats = *stats;
        status.last_commit_ms = Some(crate::source::Timestamp::now().0 / 1_000_000);
    }

    /// Sets the offset shown (at start, and after a reset).
    pub fn set_cursor(&self, cursor: String) {
        self.lock().cursor = Some(cursor);
    }

    /// Asks the pipeline to pause after the pages in flight (again: no
    /// change).
    pub fn pause(&self) {
        if self.pause.send_if_modified(|p| !std::mem::replace(p, true)) {
            let mut status = self.lock();
            if matches!(
                status.phase,
                Phase::Running | Phase::Retrying | Phase::Starting
            ) {
                status.phase = Phase::Pausing;
            }
        }
    }

    /// Lets a paused pipeline read again; `false` if it was not paused.
    pub fn resume(&self) -> bool {
        self.pause.send_if_modified(|p| std::mem::replace(p, false))
    }

    /// Whether a pause is asked for.
    pub fn pause_asked(&self) -> bool {
        *self.pause.borrow()
    }

    /// Follows pause requests.
    pub fn pause_signal(&self) -> watch::Receiver<bool> {
        self.pause.subscribe()
    }
}
