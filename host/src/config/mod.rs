//! The configuration file: its shape, parsing and validation.
//!
//! Three phases, each with errors that name the key they are about:
//! 1. [`parse`]: TOML into these types; an unknown key or a wrong type stops
//!    here with its key path (`pipelines.orders.source.tabel: unknown field`).
//! 2. [`Config::validate`]: pure checks across fields, collecting *every*
//!    problem at once (see [`validate`]).
//! 3. Building (in [`crate::pipeline`]): the I/O checks — files, tables,
//!    columns, environment variables — still naming the key.

mod admin;
mod check;
mod deliver;
mod source;
mod tagged;
mod targets;
mod tenants;
mod validate;

use crate::plugin::{EngineSettings, Grants, Limits};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use admin::AdminConfig;
pub use check::{env_references, ConfigError, Parsed};
pub use deliver::{AepConfig, DeliverConfig, FileSinkConfig, OAuthConfig, IMS_DEFAULTS};
pub use source::{
    InitialTimestamp, Polling, PostgresSourceConfig, SnowflakeAuthConfig, SnowflakeSourceConfig,
    SourceConfig, SqliteSourceConfig, TimestampConfig, TimestampUnit,
};
pub use targets::{
    CappingConfig, CrmFlavor, CrmTargetConfig, EmailTargetConfig, EmailTemplateConfig,
    RecordTargetConfig, SmtpTls, TargetConfig, WebhookTargetConfig,
};
pub use tenants::{TenantConfig, DEFAULT_TENANT};

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The wasmtime engine shared by every pipeline.
    #[serde(default)]
    pub engine: EngineSettings,
    /// Where offsets, the action ledger and dead letters live.
    pub state: StateConfig,
    /// The customers whose pipelines this host runs, by name.
    #[serde(default)]
    pub tenants: BTreeMap<String, TenantConfig>,
    /// The pipelines, by name.
    pub pipelines: BTreeMap<String, PipelineConfig>,
    /// The operations server (metrics, health, admin API, status page);
    /// off when absent.
    pub admin: Option<AdminConfig>,
}

/// `[state]`: SQLite (the default: one host) or PostgreSQL (many hosts
/// sharing the pipelines through leases).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// Which store.
    #[serde(default)]
    pub kind: StateKind,
    /// `sqlite`: the database file.
    #[serde(default)]
    pub path: PathBuf,
    /// `postgres`: the environment variable holding the connection string
    /// (`postgres://user:pass@host/db?sslmode=require`, or key=value form).
    pub url_env: Option<String>,
    /// `postgres`: how long a host's claim on a pipeline lasts unless
    /// renewed (it renews every third of it), in milliseconds. A dead
    /// host's pipelines move within about this much; a host that could not
    /// renew stops sending this long after its last renewal began.
    #[serde(default = "default_lease_ttl_ms")]
    pub lease_ttl_ms: u64,
}

/// `state.kind`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StateKind {
    /// One SQLite file: one host runs every pipeline.
    #[default]
    Sqlite,
    /// A PostgreSQL database shared by every host of the config.
    Postgres,
}

fn default_lease_ttl_ms() -> u64 {
    10_000
}

/// `[pipelines.NAME]`: one table, one plugin, one destination.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// The tenant owning the pipeline (`[tenants.NAME]`); required once any
    /// tenant is declared.
    pub tenant: Option<String>,
    /// The plugin component (`.wasm`). Replacing the file swaps the running
    /// plugin (see `engine.reload_interval_ms`).
    pub plugin: PathBuf,
    /// Read-only settings the plugin reads with `get-setting`. Never secrets.
    #[serde(default)]
    pub plugin_settings: BTreeMap<String, String>,
    /// Rows per call into the plugin.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// `false`: events only. The plugin's `decide` is not called and no
    /// action runs (e.g. a backfill of history that must not e-mail anyone
    /// again); the events are delivered as ever.
    #[serde(default = "default_actions")]
    pub actions: bool,
    /// Plugin calls that may run at once, each on its own instance (its own
    /// memory, up to `limits.memory_mib`); delivery, actions and commits stay
    /// in source order. Default: one per plugin thread (core), fewer when
    /// `engine.max_instances` is shared by many pipelines
    /// ([`Config::instances_of`]).
    pub instances: Option<usize>,
    /// Sandbox limits.
    #[serde(default)]
    pub limits: Limits,
    /// Ambient capabilities granted to the plugin (none by default).
    #[serde(default)]
    pub grants: Grants,
    /// Where rows come from.
    pub source: SourceConfig,
    /// Where events go.
    pub deliver: DeliverConfig,
    /// Action targets by the name plugins use.
    #[serde(default)]
    pub targets: BTreeMap<String, TargetConfig>,
}

fn default_batch_size() -> usize {
    500
}

fn default_actions() -> bool {
    true
}

/// Why a config file could not be used: every problem found, each with its
/// key path.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML of this shape.
    #[error("{0}")]
    Parse(ConfigError),
    /// The values do not fit together.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<ConfigError>),
}

/// Parses TOML text; an unknown key or a wrong type names its key path.
pub fn parse(text: &str) -> Result<Config, ConfigError> {
    // A syntax error has no key path yet: its line and column say where.
    let deserializer = toml::Deserializer::parse(text)
        .map_err(|e| ConfigError::new("", e.to_string().trim_end().to_owned()))?;
    serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let (path, message) = tagged::split_message(&e.path().to_string(), e.inner().message());
        ConfigError::new(path, message)
    })
}

/// Reads, parses and validates a config file. Relative paths inside it are
/// taken from the file's own folder.
pub fn load(path: &Path) -> Result<Config, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut config = parse(&text).map_err(LoadError::Parse)?;
    let errors = config.validate();
    if !errors.is_empty() {
        return Err(LoadError::Invalid(errors));
    }
    config.resolve_paths(path.parent().unwrap_or(Path::new(".")));
    Ok(config)
}

/// [`load`], its failure worded for a person: every problem, under the
/// file's name.
pub fn load_explained(path: &Path) -> anyhow::Result<Config> {
    load(path).map_err(|e| match e {
        LoadError::Read { .. } => anyhow::anyhow!("{e}"),
        _ => anyhow::anyhow!("{} is not valid:\n{e}", path.display()),
    })
}

impl Config {
    /// The plugin calls a pipeline runs at once: its `instances`, or one
    /// per plugin thread, but no more than leaves every pipeline its share
    /// of `engine.max_instances` (the pooled slots all calls draw from).
    pub fn instances_of(&self, pipeline: &PipelineConfig) -> usize {
        pipeline.instances.unwrap_or_else(|| {
            let share = self.engine.max_instances as usize / self.pipelines.len().max(1);
            self.engine.plugin_threads().min(share).max(1)
        })
    }

    /// Makes every relative path in the config relative to `base`.
    pub fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        if !self.state.path.as_os_str().is_empty() {
            fix(&mut self.state.path);
        }
        if let Some(store) = self.admin.as_mut().and_then(|a| a.plugin_store.as_mut()) {
            fix(store);
        }
        if let Some(dir) = &mut self.engine.cache_dir {
            fix(dir);
        }
        for tenant in self.tenants.values_mut() {
            for dir in [&mut tenant.plugin_dir, &mut tenant.secret_dir]
                .into_iter()
                .flatten()
            {
                fix(dir);
            }
        }
        for pipeline in self.pipelines.values_mut() {
            fix(&mut pipeline.plugin);
            match &mut pipeline.source {
                SourceConfig::Sqlite(s) => fix(&mut s.path),
                SourceConfig::Snowflake(s) => {
                    if let Some(file) = &mut s.auth.private_key_file {
                        file.rebase(base);
                    }
                }
                SourceConfig::Postgres(_) => {}
            }
            if let DeliverConfig::File(f) = &mut pipeline.deliver {
                fix(&mut f.path);
            }
            for target in pipeline.targets.values_mut() {
                match target {
                    TargetConfig::Record(r) => fix(&mut r.path),
                    TargetConfig::Email(m) => {
                        if let Some(ca) = &mut m.ca_file {
                            fix(ca);
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}
