//! A pipeline: source → plugin → deliver → actions → commit, page by page
//! (reading and mapping, delivering, and acting and committing overlap, on
//! successive pages), and
//! [`run`], which builds every pipeline of a config and runs them side by
//! side until shutdown.
//!
//! The offset advances only after the page's events were acknowledged (or
//! dead-lettered) and its actions finished (or dead-lettered), atomically with
//! the ledger. A crash anywhere replays the page: at-least-once to AEP with
//! deterministic `_id`s, and the ledger skips actions that already finished.

mod build;
mod ledger;
mod page;
pub mod pins;
mod progress;
mod replay;
mod watch_config;
mod work;

pub use build::{
    build_all, build_host, build_sink, check_plugin_dir, initial_cursor, open_source, Host,
};
pub use replay::{replay, ActionCounts, Replayed};
pub use work::action_key;

use crate::actions::Executors;
use crate::deliver::{EnvelopeBuilder, Sink};
use crate::ops::control::{Phase, PipelineControl};
use crate::plugin::reload::ReloadCounts;
use crate::plugin::scheduler::Scheduler;
use crate::plugin::{FailureCounts, Runtime, Sandbox};
use crate::profile::{Profile, Stage, StageCpu};
use crate::source::{Cursor, Page, Source, SourceError, Timestamp};
use crate::state::StateStore;
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How `run` behaves.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Drain what is there and stop, instead of polling forever.
    pub once: bool,
    /// Measure the CPU time of each stage ([`Stats::cpu`]).
    pub profile: bool,
}

/// Counters of one pipeline's run. All but `polls`, `probes` and
/// `page_queries` count committed work only.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// Polls of the source (including empty ones).
    pub polls: u64,
    /// "Anything new?" questions the source answered from metadata, without
    /// a warehouse (Snowflake; 0 for the embedded source).
    pub probes: u64,
    /// Queries that read the table (on a warehouse, for Snowflake).
    pub page_queries: u64,
    /// Pages committed.
    pub pages: u64,
    /// Rows read.
    pub rows: u64,
    /// Events the plugin produced.
    pub events: u64,
    /// Events the destination accepted.
    pub delivered: u64,
    /// Events the destination refused for good.
    pub rejected: u64,
    /// Actions executed (finished or failed for good).
    pub actions: u64,
    /// Actions skipped because the ledger had them finished (replays).
    pub actions_skipped: u64,
    /// Dead letters written.
    pub dead_letters: u64,
    /// Rows and events that failed in the sandbox, by error code.
    pub plugin_errors: FailureCounts,
    /// New plugin versions swapped in while running.
    pub reloads: u64,
    /// New plugin versions refused (the running one kept).
    pub reload_failures: u64,
    /// CPU time per stage, with [`RunOptions::profile`].
    #[serde(skip)]
    pub cpu: StageCpu,
}

impl Stats {
    /// Adds another run's counters.
    pub fn add(&mut self, other: &Stats) {
        self.polls += other.polls;
        self.probes += other.probes;
        self.page_queries += other.page_queries;
        self.pages += other.pages;
        self.rows += other.rows;
        self.events += other.events;
        self.delivered += other.delivered;
        self.rejected += other.rejected;
        self.actions += other.actions;
        self.actions_skipped += other.actions_skipped;
        self.dead_letters += other.dead_letters;
        self.plugin_errors.add(&other.plugin_errors);
        self.reloads += other.reloads;
        self.reload_failures += other.reload_failures;
        self.cpu.add(&other.cpu);
    }
}

/// One built pipeline.
pub struct Pipeline {
    name: Arc<str>,
    tenant: Arc<str>,
    source: Box<dyn Source>,
    sandbox: Sandbox,
    scheduler: Arc<Scheduler>,
    reload: Option<Reload>,
    sink: Box<dyn Sink>,
    envelopes: EnvelopeBuilder,
    executors: Executors,
    state: Arc<dyn StateStore>,
    batch_size: usize,
    /// Whether the plugin decides actions (`false`: events only).
    actions: bool,
    page_size: usize,
    poll_interval: Duration,
    delay: Duration,
    initial: build::Initial,
    /// What the operations surface sees of it and steers.
    control: Arc<PipelineControl>,
}

/// What hot reload of a pipeline's plugin needs.
struct Reload {
    runtime: Runtime,
    /// The plugin file; the config watcher sends a new one when the config
    /// file names another.
    path: tokio::sync::watch::Sender<std::path::PathBuf>,
    every: Duration,
    counts: Arc<ReloadCounts>,
}

/// Why a pipeline's stream of pages ended without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// Shutdown, or (`once`) nothing new.
    Drained,
    /// An operator asked for a pause; the pages in flight committed.
    Paused,
}

/// First wait after a failed poll; doubles up to [`MAX_RETRY_WAIT`].
const FIRST_RETRY_WAIT: Duration = Duration::from_millis(200);
const MAX_RETRY_WAIT: Duration = Duration::from_secs(30);

impl Pipeline {
    /// The pipeline's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The tenant owning it.
    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// Its record for the operations surface.
    pub fn control(&self) -> &Arc<PipelineControl> {
        &self.control
    }

    /// The stored offset, or (first start) the initial one, stored now so a
    /// restart before the first commit starts from the same place.
    pub async fn start_cursor(&self) -> anyhow::Result<Cursor> {
        if let Some(cursor) = self.state.offset(&self.name)? {
            return Ok(cursor);
        }
        let initial = initial_cursor(&self.initial, self.source.as_ref()).await?;
        Ok(self.state.init_offset(&self.name, &initial)?)
    }

    /// Polls and processes pages until shutdown (or, with `once`, until a
    /// poll finds nothing). Pages in flight when shutdown comes are finished
    /// and committed. Returns the counters; an error only for a problem
    /// retrying cannot fix (the table's schema changed under it).
    pub async fn run(
        &self,
        shutdown: CancellationToken,
        options: RunOptions,
    ) -> anyhow::Result<Stats> {
        self.run_under(None, shutdown, options).await
    }

    /// [`Pipeline::run`] under a lease (hosts sharing pipelines): until the
    /// lease's token stops it, every commit carrying its fence, and nothing
    /// sent once it ran out; a lost lease ends the run without an error.
    pub async fn run_leased(
        &self,
        hold: &crate::cluster::Hold,
        options: RunOptions,
    ) -> anyhow::Result<Stats> {
        self.run_under(Some(hold), hold.stop().clone(), options)
            .await
    }

    async fn run_under(
        &self,
        lease: Option<&crate::cluster::Hold>,
        shutdown: CancellationToken,
        options: RunOptions,
    ) -> anyhow::Result<Stats> {
        let mut stats = Stats::default();
        let profile = Profile::new(options.profile);
        let mut committed = match self.start_cursor().await {
            Ok(cursor) => cursor,
            Err(e) => {
                self.control
                    .set_phase(Phase::Failed, Some(format!("{e:#}")));
                return Err(e);
            }
        };
        self.control.set_cursor(committed.to_string());
        self.control.set_phase(Phase::Running, None);
        tracing::info!(tenant = %self.tenant, pipeline = %self.name, cursor = %committed, plugin = %&self.sandbox.plugin().version()[..12], "pipeline started");
        // The watcher stops with the pipeline, whether at shutdown or on a
        // fatal error.
        let watching = shutdown.child_token();
        let _stop_watching = watching.clone().drop_guard();
        if let Some(r) = &self.reload {
            tokio::spawn(crate::plugin::reload::watch(
                r.runtime.clone(),
                self.sandbox.clone(),
                r.path.subscribe(),
                r.every,
                r.counts.clone(),
                watching,
            ));
        }
        let mut retry_wait = FIRST_RETRY_WAIT;
        // After a pause the stored offset is read again: an operator may
        // have reset it.
        let mut reread = false;
        while !shutdown.is_cancelled() {
            if reread {
                // Paused again before the offset could be read: wait for
                // the resume first (a retry's back-off ends at a pause).
                if self.control.pause_asked() && !self.paused(&committed, &shutdown).await {
                    break;
                }
                match self.start_cursor().await {
                    Ok(cursor) => {
                        committed = cursor;
                        reread = false;
                        self.control.set_cursor(committed.to_string());
                        self.control.set_phase(Phase::Running, None);
                        tracing::info!(tenant = %self.tenant, pipeline = %self.name, cursor = %committed, "pipeline resumed");
                    }
                    Err(e) => {
                        self.retry(&e, &mut retry_wait, &committed, &shutdown).await;
                        continue;
                    }
                }
            }
            let pages = stats.pages;
            match self
                .stream(
                    &mut committed,
                    lease,
                    &shutdown,
                    options,
                    &profile,
                    &mut stats,
                )
                .await
            {
                Ok(Ended::Paused) if !shutdown.is_cancelled() => {
                    if !self.paused(&committed, &shutdown).await {
                        break;
                    }
                    reread = true;
                }
                Ok(_) => break,
                Err(e) if shutdown.is_cancelled() => {
                    tracing::info!(pipeline = %self.name, error = %e, "page abandoned at shutdown; it will be read again");
                }
                Err(e) if crate::cluster::lease_lost(&e) => {
                    tracing::warn!(tenant = %self.tenant, pipeline = %self.name, error = %format!("{e:#}"), cursor = %committed, "lease lost: the run under it ends");
                    break;
                }
                Err(e) => {
                    if let Some(SourceError::Config { .. }) = e.downcast_ref::<SourceError>() {
                        let e = e.context(format!("pipeline {}", self.name));
                        self.control
                            .set_phase(Phase::Failed, Some(format!("{e:#}")));
                        return Err(e);
                    }
                    if stats.pages > pages {
                        retry_wait = FIRST_RETRY_WAIT;
                    }
                    self.retry(&e, &mut retry_wait, &committed, &shutdown).await;
                }
            }
        }
        stats.cpu = profile.snapshot();
        let queries = self.source.query_counts();
        stats.probes = queries.probes;
        stats.page_queries = queries.page_queries;
        if let Some(r) = &self.reload {
            use std::sync::atomic::Ordering::Relaxed;
            stats.reloads = r.counts.reloads.load(Relaxed);
            stats.reload_failures = r.counts.failures.load(Relaxed);
        }
        self.control.set_phase(Phase::Stopped, None);
        tracing::info!(pipeline = %self.name, cursor = %committed, rows = stats.rows, page_queries = stats.page_queries, "pipeline stopped");
        Ok(stats)
    }

    /// Waits, paused, until resumed (`true`; at once if a resume came
    /// while the pages in flight were committing) or shutdown (`false`).
    async fn paused(&self, committed: &Cursor, shutdown: &CancellationToken) -> bool {
        self.control.set_phase(Phase::Paused, None);
        tracing::info!(tenant = %self.tenant, pipeline = %self.name, cursor = %committed, "pipeline paused");
        let mut pause = self.control.pause_signal();
        tokio::select! {
            _ = pause.wait_for(|asked| !asked) => true,
            () = shutdown.cancelled() => false,
        }
    }

    /// After a failure retrying can fix: shows it, waits (doubling `wait`
    /// up to [`MAX_RETRY_WAIT`]; after a state store failure, until the
    /// store answers again) or until shutdown or a pause is asked (the
    /// next stream then pauses at once). A source failure clears at the
    /// next answered poll; any other (the destination, the state store)
    /// only at the next commit.
    async fn retry(
        &self,
        e: &anyhow::Error,
        wait: &mut Duration,
        committed: &Cursor,
        shutdown: &CancellationToken,
    ) {
        let source = e.downcast_ref::<SourceError>().is_some();
        self.control.retrying(format!("{e:#}"), source);
        tracing::warn!(pipeline = %self.name, error = %format!("{e:#}"), wait = ?*wait, cursor = %committed, "reading or delivering failed; resuming from the committed offset");
        let mut pause = self.control.pause_signal();
        // The state store failed (a database restarting): every attempt
        // before it answers again would deliver its pages once more and
        // fail to commit them, so the next attempt waits for it.
        let store_down = matches!(
            e.downcast_ref::<crate::state::StateError>(),
            Some(crate::state::StateError::Failed(_))
        );
        loop {
            tokio::select! {
                () = tokio::time::sleep(*wait) => {}
                () = shutdown.cancelled() => return,
                _ = pause.wait_for(|asked| *asked) => return,
            }
            *wait = (*wait * 2).min(MAX_RETRY_WAIT);
            if !store_down {
                return;
            }
            let state = self.state.clone();
            match tokio::task::spawn_blocking(move || state.check()).await {
                Ok(Ok(())) => return,
                Ok(Err(e)) => {
                    tracing::warn!(pipeline = %self.name, error = %e, wait = ?*wait, "the state store still does not answer");
                }
                Err(e) => {
                    tracing::warn!(pipeline = %self.name, error = %e, "checking the state store")
                }
            }
        }
    }

    /// One poll: the source's clock less the delay, and the page after
    /// `cursor` up to that instant.
    async fn poll(&self, cursor: &Cursor, profile: &Profile) -> anyhow::Result<(Page, Timestamp)> {
        let upper = profile.measure(Stage::Source, self.source.now()).await?;
        let upper = upper.minus(self.delay);
        let page = self.source.page(cursor, upper, self.page_size);
        Ok((profile.measure(Stage::Source, page).await?, upper))
    }

    /// Runs a page's stages as a pipeline of their own: the reader (source
    /// and plugin, CPU on the plugin threads) maps page N+2 while the
    /// deliverer sends page N+1's events and the writer runs page N's
    /// actions and commits it, so the three overlap. Pages commit strictly
    /// in order, and a page's actions run only after the page before it
    /// committed (so a crash leaves one page's actions in doubt, never
    /// two); `committed` follows the writer. Ends when the reader stops
    /// (shutdown, or `once` and nothing new) and the writer has committed
    /// everything read; or on the first error, after the writer committed
    /// what was delivered before it.
    async fn stream(
        &self,
        committed: &mut Cursor,
        lease: Option<&crate::cluster::Hold>,
        shutdown: &CancellationToken,
        options: RunOptions,
        profile: &Arc<Profile>,
        stats: &mut Stats,
    ) -> anyhow::Result<Ended> {
        let (mapped_tx, mapped_rx) = tokio::sync::mpsc::channel(1);
        let (delivered_tx, delivered_rx) = tokio::sync::mpsc::channel(1);
        let polls = std::sync::atomic::AtomicU64::new(0);
        // Started by the reader when it finds the pipeline behind, advanced
        // and ended by the writer as pages commit.
        let progress = std::sync::Mutex::new(None::<progress::Progress>);
        // Stops the reader when a later stage fails.
        let stop = shutdown.child_token();
        let mut cursor = committed.clone();
        let reader = async {
            // A full page's successor is read while the page is mapped: the
            // source's query (on the blocking pool, or the warehouse's
            // time) overlaps the plugin's work instead of waiting for it.
            let mut ahead = None;
            let mut pause = self.control.pause_signal();
            let mut ended = Ended::Drained;
            while !stop.is_cancelled() {
                if *pause.borrow_and_update() {
                    ended = Ended::Paused;
                    break;
                }
                let (page, upper) = match ahead.take() {
                    Some(read) => read,
                    None => self.poll(&cursor, profile).await?,
                };
                polls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let full = page.full;
                let mut left = (!full).then_some(0);
                if full && progress.lock().expect("progress lock").is_none() {
                    left = self.source.remaining(&cursor, upper).await?;
                    if let Some(left) = left {
                        *progress.lock().expect("progress lock") =
                            Some(progress::Progress::start(&self.name, left));
                    }
                }
                self.control.polled(behind(&page, upper), left);
                let next = page.rows.last().map(|r| r.cursor.clone()).filter(|_| full);
                let mapped =
                    profile.measure(Stage::PageRecord, self.map_page(page, &stop, profile));
                let (mapped, read) = match &next {
                    Some(after) => {
                        let (mapped, read) = tokio::join!(mapped, self.poll(after, profile));
                        (mapped, Some(read))
                    }
                    None => (mapped.await, None),
                };
                if let Some(work) = mapped? {
                    cursor = work.last.clone();
                    if mapped_tx.send((work, full)).await.is_err() {
                        break;
                    }
                } else {
                    // Idle: hand the warm instances' pooled slots back.
                    self.sandbox.release();
                    if let Some(m) = &self.control.metrics {
                        m.instances(0);
                    }
                    if let Some(p) = progress.lock().expect("progress lock").take() {
                        p.finish();
                    }
                }
                // A failed read ahead fails only after the page before it
                // went on, to be committed.
                if let Some(read) = read {
                    ahead = Some(read?);
                    continue;
                }
                if options.once {
                    break;
                }
                tokio::select! {
                    () = tokio::time::sleep(self.poll_interval) => {}
                    () = stop.cancelled() => {}
                    _ = pause.wait_for(|asked| *asked) => {}
                }
            }
            drop(mapped_tx);
            anyhow::Ok(ended)
        };
        let deliverer = async {
            // Owned here, so a failed delivery closes the channel and a
            // reader waiting to hand over its next page stops instead of
            // waiting forever.
            let mut mapped_rx = mapped_rx;
            while let Some((mut work, full)) = mapped_rx.recv().await {
                // The writer failed: what is delivered now would only be
                // delivered again.
                if delivered_tx.is_closed() {
                    break;
                }
                if let Err(e) = self.deliver(&mut work, lease, profile).await {
                    stop.cancel();
                    return Err(e);
                }
                if delivered_tx.send((work, full)).await.is_err() {
                    break;
                }
            }
            drop(delivered_tx);
            anyhow::Ok(())
        };
        let writer = async {
            // Owned here for the same reason: a failed commit frees the
            // deliverer.
            let mut delivered_rx = delivered_rx;
            while let Some((work, full)) = delivered_rx.recv().await {
                let rows = stats.rows;
                match self.finish(work, lease, profile, stats).await {
                    Ok(cursor) => {
                        *committed = cursor;
                        let mut progress = progress.lock().expect("progress lock");
                        if let Some(p) = progress.as_mut() {
                            p.advance(stats.rows - rows);
                            self.control.rows_left(p.left());
                        }
                        if !full {
                            if let Some(p) = progress.take() {
                                p.finish();
                            }
                        }
                    }
                    Err(e) => {
                        stop.cancel();
                        return Err(e);
                    }
                }
            }
            anyhow::Ok(())
        };
        // A failed read or delivery still lets the writer commit what came
        // through before it.
        let (read, delivered, written) = profile
            .scope(async { tokio::join!(reader, deliverer, writer) })
            .await;
        stats.polls += polls.into_inner();
        written.and(delivered).and(read)
    }
}

/// How far a poll was behind the source, in seconds: from its last row to
/// the instant it read up to, when the page was cut short of that instant;
/// 0 when it reached it.
fn behind(page: &Page, upper: Timestamp) -> f64 {
    match page.rows.last() {
        Some(last) if page.full => upper.0.saturating_sub(last.cursor.ts.0).max(0) as f64 / 1e9,
        _ => 0.0,
    }
}

/// Builds every pipeline in the config and runs them concurrently until
/// `shutdown` (or, with `once`, until each has drained), with the
/// operations server of `[admin]` beside them. Returns each pipeline's
/// counters; fails if any pipeline could not be built or stopped on an
/// error.
pub async fn run(
    config: &crate::config::Config,
    shutdown: CancellationToken,
    options: RunOptions,
) -> anyhow::Result<Vec<(String, Stats)>> {
    run_host(config, None, shutdown, options).await
}

/// [`run`] for a config file, which is watched while the pipelines run (every
/// `engine.reload_interval_ms`): when it names another plugin file for a
/// pipeline, that pipeline switches to it as when its file is replaced.
/// Other changes wait for a restart (and are reported as such); a change
/// that does not load or validate is reported and ignored.
pub async fn run_file(
    path: &std::path::Path,
    shutdown: CancellationToken,
    options: RunOptions,
) -> anyhow::Result<Vec<(String, Stats)>> {
    let config = crate::config::load_explained(path)?;
    run_host(&config, Some(path), shutdown, options).await
}

async fn run_host(
    config: &crate::config::Config,
    file: Option<&std::path::Path>,
    shutdown: CancellationToken,
    options: RunOptions,
) -> anyhow::Result<Vec<(String, Stats)>> {
    let admin = config.admin.as_ref();
    let metrics = admin
        .filter(|a| a.metrics)
        .map(|_| crate::metrics::Metrics::default());
    let host = build_host(config, &shutdown, metrics.as_ref()).await?;
    let server = match admin {
        Some(_) => Some(crate::ops::start(config, file, &host, metrics.as_ref()).await?),
        None => None,
    };
    // The watcher stops with the pipelines.
    let watching = shutdown.child_token();
    let _stop_watching = watching.clone().drop_guard();
    if let Some(path) = file {
        let plugins: Vec<_> = host
            .pipelines
            .iter()
            .filter_map(|p| Some((p.name.to_string(), p.reload.as_ref()?.path.clone())))
            .collect();
        if !plugins.is_empty() {
            let every = Duration::from_millis(config.engine.reload_interval_ms);
            tokio::spawn(watch_config::watch(
                path.to_owned(),
                plugins,
                host.state.clone(),
                every,
                watching,
            ));
        }
    }
    let results = match host.shared {
        Some(store) => {
            let ttl = Duration::from_millis(config.state.lease_ttl_ms);
            let weights = config
                .pipelines
                .iter()
                .map(|(name, p)| (name.clone(), config.weight_of(p)))
                .collect();
            crate::cluster::run(store, host.pipelines, weights, ttl, shutdown, options).await
        }
        None => run_pipelines(host.pipelines, shutdown, options).await,
    };
    if let Some(server) = server {
        server.stop().await;
    }
    results
}

/// Runs built pipelines side by side; see [`run`].
async fn run_pipelines(
    pipelines: Vec<Pipeline>,
    shutdown: CancellationToken,
    options: RunOptions,
) -> anyhow::Result<Vec<(String, Stats)>> {
    let mut tasks = tokio::task::JoinSet::new();
    for pipeline in pipelines {
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            let result = pipeline.run(shutdown, options).await;
            (pipeline.name().to_owned(), result)
        });
    }
    let mut results = Vec::new();
    let mut failures = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (name, result) = joined?;
        match result {
            Ok(stats) => results.push((name, stats)),
            Err(e) => {
                tracing::error!(pipeline = %name, error = %format!("{e:#}"), "pipeline stopped on an error");
                failures.push(format!("{e:#}"));
            }
        }
    }
    if !failures.is_empty() {
        anyhow::bail!("{}", failures.join("\n"));
    }
    results.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(results)
}
