//! Tenants: who owns which pipelines, plugin files and secrets.
//!
//! A host running many customers' logic declares each customer under
//! `[tenants.NAME]` and names the owner in every pipeline (`tenant = "…"`).
//! A tenant's pipelines may read only the environment variables listed in
//! its `secrets` and the files in its `secret_dir` (enforced where secrets
//! are read: [`crate::secrets::Secrets`]), and load plugins only from its
//! `plugin_dir`, so one customer's config cannot borrow another's
//! credentials or code. Without any `[tenants]` table the host has one
//! implicit tenant, `default`, with no such restrictions (a single-customer
//! deployment).
//!
//! The targets a pipeline's plugin may name are that pipeline's own
//! (`[pipelines.NAME.targets]`), hence its tenant's.

use super::check::{is_env_name, is_identifier, ConfigError};
use super::{Config, PipelineConfig};
use serde::Deserialize;
use std::path::PathBuf;

/// The tenant of pipelines that name none, when no tenants are declared.
pub const DEFAULT_TENANT: &str = "default";

/// `[tenants.NAME]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// The folder the tenant's plugin files must be in (checked after
    /// symlinks are resolved); none allows any path.
    pub plugin_dir: Option<PathBuf>,
    /// The environment variables the tenant's pipelines may read (as
    /// `*_env` settings or `${VAR}` in headers).
    #[serde(default)]
    pub secrets: Vec<String>,
    /// The folder the tenant's secret files (a Snowflake private key) must
    /// be in, checked after symlinks are resolved; without it the tenant's
    /// pipelines may name no secret file.
    pub secret_dir: Option<PathBuf>,
    /// The environment variable holding the tenant's admin API token: it
    /// sees and changes only this tenant's pipelines, plugin versions and
    /// dead letters. Needs `[admin]`.
    pub admin_token_env: Option<String>,
    /// What each of the tenant's pipelines counts for when hosts share
    /// pipelines (`state.kind = "postgres"`): a host's fair share is of the
    /// total weight, not of the number of pipelines. 1-1000, default 1.
    pub weight: Option<u32>,
}

/// The most a tenant's pipelines may weigh.
const MAX_WEIGHT: u32 = 1000;

impl Config {
    /// The tenant owning a pipeline.
    pub fn tenant_of<'a>(&'a self, pipeline: &'a PipelineConfig) -> &'a str {
        pipeline.tenant.as_deref().unwrap_or(DEFAULT_TENANT)
    }

    /// What a pipeline counts for in a host's fair share: its tenant's
    /// `weight`, else 1.
    pub fn weight_of(&self, pipeline: &PipelineConfig) -> u32 {
        self.tenants
            .get(self.tenant_of(pipeline))
            .and_then(|t| t.weight)
            .unwrap_or(1)
    }
}

/// Checks tenant ownership: every pipeline names a declared tenant (once
/// any is declared), names only its tenant's variables (each found by
/// [`crate::secrets::env_references`], and checked again where it is read)
/// and passes no secret to its plugin.
pub(super) fn validate(config: &Config, out: &mut Vec<ConfigError>) {
    for (name, tenant) in &config.tenants {
        if !is_identifier(name) {
            out.push(ConfigError::new(
                format!("tenants.{name}"),
                "a tenant name is 1-64 of a-z, 0-9, '-' and '_'",
            ));
        }
        if let Some(weight) = tenant.weight {
            if !(1..=MAX_WEIGHT).contains(&weight) {
                out.push(ConfigError::new(
                    format!("tenants.{name}.weight"),
                    format!("must be between 1 and {MAX_WEIGHT}, not {weight}"),
                ));
            }
        }
        for (i, var) in tenant.secrets.iter().enumerate() {
            if !is_env_name(var) {
                out.push(ConfigError::new(
                    format!("tenants.{name}.secrets[{i}]"),
                    format!("{var:?} is not an environment variable name"),
                ));
            }
        }
    }
    let declared: Vec<&str> = config.tenants.keys().map(String::as_str).collect();
    for (name, pipeline) in &config.pipelines {
        let prefix = format!("pipelines.{name}");
        for (setting, value) in &pipeline.plugin_settings {
            if value.contains("${") {
                out.push(ConfigError::new(
                    format!("{prefix}.plugin_settings.{setting}"),
                    "plugin settings reach the plugin as written and are never expanded: \
                     secrets belong to a source, destination or target (`*_env`)",
                ));
            }
        }
        let tenant = match (&pipeline.tenant, declared.is_empty()) {
            (None, true) => continue,
            (None, false) => {
                out.push(ConfigError::new(
                    format!("{prefix}.tenant"),
                    format!(
                        "required once tenants are declared: one of {}",
                        declared.join(", ")
                    ),
                ));
                continue;
            }
            (Some(t), _) => t,
        };
        if !config.tenants.contains_key(tenant) {
            let known = if declared.is_empty() {
                "no tenants are declared under [tenants]".to_owned()
            } else {
                format!("declared tenants: {}", declared.join(", "))
            };
            out.push(ConfigError::new(
                format!("{prefix}.tenant"),
                format!("unknown tenant {tenant:?} ({known})"),
            ));
            continue;
        }
        let secrets = crate::secrets::Secrets::of(config, pipeline);
        for (key, var) in crate::secrets::env_references(pipeline) {
            if let Err(e) = secrets.check_env(&var, &format!("{prefix}.{key}")) {
                out.push(ConfigError::new(e.key, e.message));
            }
        }
    }
}
