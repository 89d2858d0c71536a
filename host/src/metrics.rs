//! Prometheus metrics: the families a host exports at `/metrics`, and the
//! per-pipeline handle the pipeline writes to as pages commit.
//!
//! Names and units follow Prometheus conventions (`_total` counters,
//! `_seconds` histograms, base units). Every pipeline series carries
//! `tenant` and `pipeline`. The hot path touches only atomics resolved when
//! the pipeline is built; series whose labels depend on the page (actions
//! by target, dead letters and plugin errors by code) are looked up per
//! page, not per row (a row costs one delivery-lag observation).

use crate::plugin::FailureCounts;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use std::sync::atomic::AtomicU64;

/// `tenant`, `pipeline`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PipelineLabels {
    /// The tenant owning the pipeline.
    pub tenant: String,
    /// The pipeline.
    pub pipeline: String,
}

/// A pipeline's series with one more label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    tenant: String,
    pipeline: String,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabels {
    tenant: String,
    pipeline: String,
    target: String,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabels {
    tenant: String,
    pipeline: String,
    code: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OriginLabels {
    origin: &'static str,
}

type Seconds = Gauge<f64, AtomicU64>;

fn latency_buckets() -> Histogram {
    // 1 ms to ~65 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

fn lag_buckets() -> Histogram {
    // 1 ms to ~2.3 h: a backfill's rows are hours old.
    Histogram::new(exponential_buckets(0.001, 2.0, 24))
}

/// Every family of the host, registered once.
#[derive(Clone)]
pub struct Metrics {
    rows: Family<PipelineLabels, Counter>,
    pages: Family<PipelineLabels, Counter>,
    events: Family<OutcomeLabels, Counter>,
    actions: Family<ActionLabels, Counter>,
    dead_letters: Family<CodeLabels, Counter>,
    plugin_calls: Family<PipelineLabels, Counter>,
    plugin_fuel: Family<PipelineLabels, Counter>,
    plugin_errors: Family<CodeLabels, Counter>,
    plugin_instances: Family<PipelineLabels, Gauge>,
    page_latency: Family<PipelineLabels, Histogram, fn() -> Histogram>,
    delivery_lag: Family<PipelineLabels, Histogram, fn() -> Histogram>,
    source_lag_seconds: Family<PipelineLabels, Seconds>,
    source_lag_rows: Family<PipelineLabels, Gauge>,
    paused: Family<PipelineLabels, Gauge>,
    failing: Family<PipelineLabels, Gauge>,
    plugin_loads: Family<OriginLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            rows: Family::default(),
            pages: Family::default(),
            events: Family::default(),
            actions: Family::default(),
            dead_letters: Family::default(),
            plugin_calls: Family::default(),
            plugin_fuel: Family::default(),
            plugin_errors: Family::default(),
            plugin_instances: Family::default(),
            page_latency: Family::new_with_constructor(latency_buckets),
            delivery_lag: Family::new_with_constructor(lag_buckets),
            source_lag_seconds: Family::default(),
            source_lag_rows: Family::default(),
            paused: Family::default(),
            failing: Family::default(),
            plugin_loads: Family::default(),
        }
    }
}

impl Metrics {
    /// A registry holding every family (`freshet_` names).
    pub fn registry(&self) -> Registry {
        let mut r = Registry::with_prefix("freshet");
        let m = self.clone();
        r.register("rows_read", "Rows read and committed", m.rows);
        r.register("pages", "Pages committed", m.pages);
        r.register(
            "events",
            "Events by what the destination did: delivered or refused",
            m.events,
        );
        r.register(
            "actions",
            "Actions by target and outcome: done, failed (dead-lettered), skipped (the ledger had them)",
            m.actions,
        );
        r.register(
            "dead_letters",
            "Dead letters written, by code",
            m.dead_letters,
        );
        r.register(
            "plugin_calls",
            "Calls into the plugin sandbox",
            m.plugin_calls,
        );
        r.register(
            "plugin_fuel_used",
            "Fuel (wasm instructions, roughly) the plugin used",
            m.plugin_fuel,
        );
        r.register(
            "plugin_errors",
            "Rows and events the plugin failed on, by code",
            m.plugin_errors,
        );
        r.register(
            "plugin_instances",
            "Warm plugin instances the pipeline holds",
            m.plugin_instances,
        );
        r.register_with_unit(
            "page_latency",
            "From reading a page to committing it",
            Unit::Seconds,
            m.page_latency,
        );
        r.register_with_unit(
            "delivery_lag",
            "From a row's timestamp to its page's commit, per row",
            Unit::Seconds,
            m.delivery_lag,
        );
        r.register_with_unit(
            "source_lag",
            "How far the last poll was behind the source: 0 when caught up to now minus the delay",
            Unit::Seconds,
            m.source_lag_seconds,
        );
        r.register(
            "source_lag_rows",
            "Rows left to read when the pipeline is behind (0 when caught up)",
            m.source_lag_rows,
        );
        r.register(
            "pipeline_paused",
            "1 while the pipeline is paused",
            m.paused,
        );
        r.register(
            "pipeline_failing",
            "1 while the pipeline retries after an error (source or destination unreachable)",
            m.failing,
        );
        r.register(
            "plugin_loads",
            "Plugin components loaded, by where the machine code came from: memory, disk_cache or compiled",
            m.plugin_loads,
        );
        r
    }

    /// The handle one pipeline writes to.
    pub fn pipeline(&self, tenant: &str, pipeline: &str) -> PipelineMetrics {
        let labels = PipelineLabels {
            tenant: tenant.to_owned(),
            pipeline: pipeline.to_owned(),
        };
        let outcome = |outcome| OutcomeLabels {
            tenant: tenant.to_owned(),
            pipeline: pipeline.to_owned(),
            outcome,
        };
        // Every plugin error code starts at 0, so that a rate or an alert
        // sees a series before the first failure.
        for code in FailureCounts::CODES {
            series(
                &self.plugin_errors,
                &CodeLabels {
                    tenant: tenant.to_owned(),
                    pipeline: pipeline.to_owned(),
                    code: code.to_owned(),
                },
            );
        }
        PipelineMetrics {
            rows: series(&self.rows, &labels),
            pages: series(&self.pages, &labels),
            delivered: series(&self.events, &outcome("delivered")),
            refused: series(&self.events, &outcome("refused")),
            calls: series(&self.plugin_calls, &labels),
            fuel: series(&self.plugin_fuel, &labels),
            instances: series(&self.plugin_instances, &labels),
            page_latency: series(&self.page_latency, &labels),
            delivery_lag: series(&self.delivery_lag, &labels),
            lag_seconds: series(&self.source_lag_seconds, &labels),
            lag_rows: series(&self.source_lag_rows, &labels),
            paused: series(&self.paused, &labels),
            failing: series(&self.failing, &labels),
            families: self.clone(),
            labels,
        }
    }

    /// Counts a plugin load: `origin` is `memory`, `disk_cache` or
    /// `compiled`.
    pub fn plugin_loaded(&self, origin: &'static str) {
        self.plugin_loads
            .get_or_create(&OriginLabels { origin })
            .inc();
    }
}

/// The series of `labels` in `family`. A function of its own: the guard
/// `get_or_create` returns holds the family's lock, and a second lookup in
/// the same expression would wait for it forever.
fn series<L, M, C>(family: &Family<L, M, C>, labels: &L) -> M
where
    L: Clone + std::hash::Hash + Eq,
    M: Clone,
    C: prometheus_client::metrics::family::MetricConstructor<M>,
{
    family.get_or_create(labels).clone()
}

/// One pipeline's series.
#[derive(Clone)]
pub struct PipelineMetrics {
    labels: PipelineLabels,
    rows: Counter,
    pages: Counter,
    delivered: Counter,
    refused: Counter,
    /// Plugin calls (counted by the sandbox).
    pub calls: Counter,
    /// Fuel used (counted by the sandbox).
    pub fuel: Counter,
    instances: Gauge,
    page_latency: Histogram,
    delivery_lag: Histogram,
    lag_seconds: Seconds,
    lag_rows: Gauge,
    paused: Gauge,
    failing: Gauge,
    families: Metrics,
}

/// What one committed page adds.
pub struct PageFigures<'a> {
    /// Rows committed.
    pub rows: u64,
    /// Events the destination accepted.
    pub delivered: u64,
    /// Events it refused for good.
    pub refused: u64,
    /// Actions by target and outcome (`done`, `failed`, `skipped`).
    pub actions: &'a [(String, &'static str, u64)],
    /// Each dead letter's code.
    pub dead_letters: &'a [&'a str],
    /// Plugin failures by code.
    pub plugin_errors: &'a FailureCounts,
    /// From read to commit.
    pub latency: std::time::Duration,
    /// Each row's age at commit, seconds.
    pub row_ages: &'a [f64],
    /// Warm instances now.
    pub instances: usize,
}

impl PipelineMetrics {
    /// Adds a committed page.
    pub fn committed(&self, page: &PageFigures<'_>) {
        self.pages.inc();
        self.rows.inc_by(page.rows);
        self.delivered.inc_by(page.delivered);
        self.refused.inc_by(page.refused);
        self.page_latency.observe(page.latency.as_secs_f64());
        for age in page.row_ages {
            self.delivery_lag.observe(*age);
        }
        self.instances(page.instances);
        let labels = &self.labels;
        for (target, outcome, n) in page.actions {
            let labels = ActionLabels {
                tenant: labels.tenant.clone(),
                pipeline: labels.pipeline.clone(),
                target: target.clone(),
                outcome,
            };
            self.families.actions.get_or_create(&labels).inc_by(*n);
        }
        let coded = |code: &str| CodeLabels {
            tenant: labels.tenant.clone(),
            pipeline: labels.pipeline.clone(),
            code: code.to_owned(),
        };
        for code in page.dead_letters {
            self.families.dead_letters.get_or_create(&coded(code)).inc();
        }
        for code in FailureCounts::CODES {
            let n = page.plugin_errors.get(code);
            if n > 0 {
                self.families
                    .plugin_errors
                    .get_or_create(&coded(code))
                    .inc_by(n);
            }
        }
    }

    /// The warm instances the pipeline holds now.
    pub fn instances(&self, n: usize) {
        self.instances.set(n as i64);
    }

    /// After a poll: how far behind the source the pipeline is.
    pub fn behind(&self, seconds: f64, rows: Option<u64>) {
        self.lag_seconds.set(seconds.max(0.0));
        if let Some(rows) = rows {
            self.behind_rows(rows);
        }
    }

    /// Rows still to read.
    pub fn behind_rows(&self, rows: u64) {
        self.lag_rows.set(rows as i64);
    }

    /// Whether the pipeline is paused, and whether it is failing.
    pub fn phase(&self, paused: bool, failing: bool) {
        self.paused.set(i64::from(paused));
        self.failing.set(i64::from(failing));
    }
}
