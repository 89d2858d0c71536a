//! From a validated config to running parts: the I/O phase of config
//! handling. Every failure names the config key it is about, and all
//! pipelines are checked before any starts.

use super::Pipeline;
use crate::actions::Executors;
use crate::config::{Config, DeliverConfig, InitialTimestamp, SourceConfig, IMS_DEFAULTS};
use crate::deliver::aep::{AepSettings, AepSink};
use crate::deliver::auth::Tokens;
use crate::deliver::file::FileSink;
use crate::deliver::{EnvelopeBuilder, SchemaRef, Sink};
use crate::ops::control::PipelineControl;
use crate::plugin::{CallContext, Plugin, Runtime, Sandbox};
use crate::secrets::Secrets;
use crate::source::postgres::PostgresSource;
use crate::source::snowflake::SnowflakeSource;
use crate::source::sqlite::SqliteSource;
use crate::source::{Cursor, Source, Timestamp};
use crate::state::StateStore;
use anyhow::{anyhow, Context as _};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Where a pipeline with no stored offset starts.
#[derive(Debug, Clone, PartialEq)]
pub enum Initial {
    /// At this instant (inclusive).
    At(Timestamp),
    /// At the source's "now" when the pipeline first starts.
    Now,
}

impl Initial {
    /// `timestamp.initial`, or what `backfill` implies, as the vendor's
    /// connector reads them: `0` everything, `-1` from first start.
    pub fn from_config(initial: Option<&InitialTimestamp>, backfill: bool) -> anyhow::Result<Self> {
        Ok(match initial {
            None if backfill => Initial::At(Timestamp::EPOCH),
            None | Some(InitialTimestamp::EpochSeconds(-1)) => Initial::Now,
            Some(InitialTimestamp::EpochSeconds(s)) => {
                Initial::At(Timestamp(s.saturating_mul(1_000_000_000)))
            }
            Some(InitialTimestamp::Rfc3339(instant)) => Initial::At(
                *instant
                    .value()
                    .map_err(|e| anyhow::anyhow!("{:?}: {e}", instant.text()))?,
            ),
        })
    }
}

/// The first cursor of a pipeline.
pub async fn initial_cursor(initial: &Initial, source: &dyn Source) -> anyhow::Result<Cursor> {
    Ok(match initial {
        Initial::At(ts) => Cursor::before(*ts),
        Initial::Now => Cursor::before(source.now().await?),
    })
}

/// Validates the config and builds every pipeline; on failure, reports
/// every problem of every pipeline.
pub async fn build_all(
    config: &Config,
    shutdown: &CancellationToken,
) -> anyhow::Result<Vec<Pipeline>> {
    Ok(build_host(config, shutdown, None).await?.pipelines)
}

/// What a host runs: its pipelines, and the engine and state store they
/// share (which the operations surface uses too).
pub struct Host {
    /// Every pipeline of the config.
    pub pipelines: Vec<Pipeline>,
    /// The wasmtime engine and plugin threads.
    pub runtime: Runtime,
    /// Offsets, ledger, dead letters, plugin versions.
    pub state: Arc<dyn StateStore>,
    /// The same store when hosts share the pipelines through it
    /// (PostgreSQL): this host runs only those it holds a lease on.
    pub shared: Option<Arc<crate::state::postgres::PostgresState>>,
}

/// [`build_all`], keeping the shared parts; with `metrics`, each pipeline
/// reports to it.
pub async fn build_host(
    config: &Config,
    shutdown: &CancellationToken,
    metrics: Option<&crate::metrics::Metrics>,
) -> anyhow::Result<Host> {
    // The library entry checks what the CLI's `config::load` checks, so a
    // config built in code gets the same errors as one read from a file.
    let problems = config.validate();
    if !problems.is_empty() {
        return Err(crate::config::LoadError::Invalid(problems).into());
    }
    let runtime = Runtime::new(&config.engine).context("engine")?;
    if let Some(m) = metrics {
        runtime.count_loads_into(m.clone());
    }
    let opened = crate::state::open(&config.state)?;
    let state = opened.store;
    let mut pipelines = Vec::new();
    let mut errors = Vec::new();
    for name in config.pipelines.keys() {
        match build(config, name, &runtime, state.clone(), shutdown, metrics).await {
            Ok(p) => pipelines.push(p),
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    if !errors.is_empty() {
        anyhow::bail!("{}", errors.join("\n"));
    }
    Ok(Host {
        pipelines,
        runtime,
        state,
        shared: opened.shared,
    })
}

/// The pipeline's destination and its envelope builder; `prefix` is the
/// pipeline's key; secrets come through the tenant's `secrets`.
pub fn build_sink(
    deliver: &DeliverConfig,
    prefix: &str,
    secrets: &Secrets,
    shutdown: &CancellationToken,
) -> anyhow::Result<(Box<dyn Sink>, EnvelopeBuilder)> {
    Ok(match deliver {
        DeliverConfig::Aep(a) => {
            let timeout = Duration::from_millis(a.timeout_ms);
            let tokens = Tokens::configured(
                a.ims.as_ref().map(|ims| ims.settings(IMS_DEFAULTS)),
                a.token_env.as_ref(),
                secrets,
                (&format!("{prefix}.deliver"), "ims"),
                timeout,
            )?;
            let settings = AepSettings {
                base_url: a.base_url.clone(),
                connection_id: a.connection_id.clone(),
                flow_id: a.flow_id.clone(),
                max_request_bytes: a.max_request_bytes,
                concurrency: a.concurrency,
                timeout,
                backoff: (Duration::from_millis(200), Duration::from_secs(30)),
                sync_validation: a.sync_validation,
            };
            let sink = AepSink::new(settings, tokens, shutdown.clone())
                .with_context(|| format!("{prefix}.deliver"))?;
            let schema = SchemaRef {
                id: a.schema_id.clone(),
            };
            let envelopes = EnvelopeBuilder::new(
                &schema,
                &a.ims_org,
                &a.dataset_id,
                a.flow_id.as_deref(),
                &a.source_name,
            );
            (Box::new(sink), envelopes)
        }
        DeliverConfig::File(f) => {
            let sink = FileSink::open(&f.path)
                .with_context(|| format!("{prefix}.deliver.path: {}", f.path.display()))?;
            let schema = SchemaRef {
                id: f.schema_id.clone(),
            };
            (
                Box::new(sink),
                EnvelopeBuilder::new(&schema, &f.ims_org, &f.dataset_id, None, &f.source_name),
            )
        }
    })
}

/// Opens the configured source and checks its table; `prefix` is the
/// pipeline's key; secrets come through the tenant's `secrets`.
pub async fn open_source(
    config: &SourceConfig,
    prefix: &str,
    secrets: &Secrets,
) -> anyhow::Result<Box<dyn Source>> {
    let prefix = format!("{prefix}.source");
    Ok(match config {
        SourceConfig::Sqlite(s) => Box::new(Arc::new(SqliteSource::open(s, &prefix)?)),
        SourceConfig::Snowflake(s) => Box::new(SnowflakeSource::open(s, &prefix, secrets).await?),
        SourceConfig::Postgres(s) => Box::new(PostgresSource::open(s, &prefix, secrets).await?),
    })
}

/// Loads a pipeline's plugin on the blocking pool (compiling may take
/// seconds); errors name the key.
pub async fn load_plugin(
    runtime: &Runtime,
    path: &std::path::Path,
    prefix: &str,
) -> anyhow::Result<Plugin> {
    let (runtime, file) = (runtime.clone(), path.to_owned());
    let plugin = tokio::task::spawn_blocking(move || runtime.load(&file))
        .await?
        .map_err(|e| anyhow!("{prefix}.plugin: {}: {e}", path.display()))?;
    tracing::debug!(plugin = %path.display(), version = &plugin.version()[..12], origin = ?plugin.origin(), "plugin loaded");
    Ok(plugin)
}

async fn build(
    all: &Config,
    name: &str,
    runtime: &Runtime,
    state: Arc<dyn StateStore>,
    shutdown: &CancellationToken,
    metrics: Option<&crate::metrics::Metrics>,
) -> anyhow::Result<Pipeline> {
    let config = &all.pipelines[name];
    let prefix = format!("pipelines.{name}");
    // A version switched in through the admin API outlives restarts; it
    // was checked when uploaded and is the tenant's by record.
    let pinned = super::pins::pinned_plugin(all, state.as_ref(), name)
        .with_context(|| format!("{prefix}: the plugin version it was switched to"))?;
    if pinned.is_none() {
        check_plugin_dir(all, name)?;
    }
    let plugin_path = pinned
        .as_ref()
        .map_or_else(|| config.plugin.clone(), |p| p.path.clone());
    let secrets = Secrets::of(all, config);
    let plugin = load_plugin(runtime, &plugin_path, &prefix).await?;
    let source = open_source(&config.source, &prefix, &secrets).await?;
    let (sink, envelopes) = build_sink(&config.deliver, &prefix, &secrets, shutdown)?;
    let executors = Executors::build(&config.targets, &prefix, &secrets)?;
    let polling = config.source.polling();
    let initial = Initial::from_config(polling.timestamp.initial.as_ref(), polling.backfill)
        .with_context(|| format!("{prefix}.source.timestamp.initial"))?;
    let tenant = all.tenant_of(config);
    let reload_every = all.engine.reload_interval_ms;
    let sandbox = Sandbox::new(
        plugin,
        CallContext {
            instances: all.instances_of(config),
            ..CallContext::new(
                tenant,
                name,
                config.limits.clone(),
                config.plugin_settings.clone(),
                config.grants,
            )
        },
    );
    let reload = (reload_every > 0).then(|| super::Reload {
        runtime: runtime.clone(),
        path: tokio::sync::watch::Sender::new(plugin_path.clone()),
        every: Duration::from_millis(reload_every),
        counts: Arc::default(),
    });
    let metrics = metrics.map(|m| m.pipeline(tenant, name));
    if let Some(m) = &metrics {
        sandbox.cpu().count_into(m.calls.clone(), m.fuel.clone());
    }
    let control = Arc::new(PipelineControl::new(
        name.into(),
        tenant.into(),
        sandbox.clone(),
        metrics,
        reload.as_ref().map(|r| r.path.clone()),
        pinned.map(|p| p.digest),
    ));
    Ok(Pipeline {
        name: name.into(),
        tenant: tenant.into(),
        source,
        sandbox,
        scheduler: runtime.scheduler().clone(),
        reload,
        sink,
        envelopes,
        executors,
        state,
        batch_size: config.batch_size,
        actions: config.actions,
        page_size: polling.page_size,
        poll_interval: Duration::from_millis(polling.poll_interval_ms),
        delay: Duration::from_millis(polling.delay_ms),
        initial,
        control,
    })
}

/// Checks a pipeline's plugin file lies inside its tenant's `plugin_dir`,
/// after resolving symlinks and `..` (an I/O check, run when building).
pub fn check_plugin_dir(config: &Config, name: &str) -> anyhow::Result<()> {
    let pipeline = &config.pipelines[name];
    let Some(dir) = pipeline
        .tenant
        .as_ref()
        .and_then(|t| config.tenants.get(t))
        .and_then(|t| t.plugin_dir.as_ref())
    else {
        return Ok(());
    };
    let tenant = config.tenant_of(pipeline);
    let dir = dir
        .canonicalize()
        .map_err(|e| anyhow::anyhow!("tenants.{tenant}.plugin_dir: {}: {e}", dir.display()))?;
    let plugin = pipeline.plugin.canonicalize().map_err(|e| {
        anyhow::anyhow!(
            "pipelines.{name}.plugin: {}: {e}",
            pipeline.plugin.display()
        )
    })?;
    anyhow::ensure!(
        plugin.starts_with(&dir),
        "pipelines.{name}.plugin: {} is outside tenant {tenant}'s plugin_dir {}",
        plugin.display(),
        dir.display()
    );
    Ok(())
}
