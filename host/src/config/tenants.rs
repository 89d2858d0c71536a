//! Tenants: who owns which pipelines, plugin files and secrets.
//!
//! A host running many customers' logic declares each customer under
//! `[tenants.NAME]` and names the owner in every pipeline (`tenant = "…"`).
//! A tenant's pipelines may read only the environment variables listed in
//! its `secrets` and load plugins only from its `plugin_dir`, so one
//! customer's config cannot borrow another's credentials or code. Without
//! any `[tenants]` table the host has one implicit tenant, `default`, with no
//! such restrictions (a single-customer deployment).
//!
//! The targets a pipeline's plugin may name are that pipeline's own
//! (`[pipelines.NAME.targets]`), hence its tenant's.

use super::validate::{env_references, ConfigError};
use super::{Config, DeliverConfig, PipelineConfig, SourceConfig, TargetConfig};
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
}

impl Config {
    /// The tenant owning a pipeline.
    pub fn tenant_of<'a>(&'a self, pipeline: &'a PipelineConfig) -> &'a str {
        pipeline.tenant.as_deref().unwrap_or(DEFAULT_TENANT)
    }
}

impl PipelineConfig {
    /// Every environment variable the pipeline reads, with the key (under
    /// the pipeline) that names it.
    pub fn secret_references(&self) -> Vec<(String, String)> {
        let mut refs = Vec::new();
        let mut add = |key: String, var: &Option<String>| {
            if let Some(var) = var {
                refs.push((key, var.clone()));
            }
        };
        if let SourceConfig::Snowflake(s) = &self.source {
            add("source.auth.password_env".into(), &s.auth.password_env);
            add(
                "source.auth.private_key_env".into(),
                &s.auth.private_key_env,
            );
            add("source.auth.passphrase_env".into(), &s.auth.passphrase_env);
        }
        if let DeliverConfig::Aep(a) = &self.deliver {
            add("deliver.token_env".into(), &a.token_env);
            if let Some(ims) = &a.ims {
                add(
                    "deliver.ims.client_id_env".into(),
                    &Some(ims.client_id_env.clone()),
                );
                add(
                    "deliver.ims.client_secret_env".into(),
                    &Some(ims.client_secret_env.clone()),
                );
            }
        }
        for (name, target) in &self.targets {
            let key = |k: &str| format!("targets.{name}.{k}");
            match target {
                TargetConfig::Webhook(w) => {
                    add(key("signing_secret_env"), &w.signing_secret_env);
                    for (header, value) in &w.headers {
                        for var in env_references(value).unwrap_or_default() {
                            add(key(&format!("headers.{header}")), &Some(var.to_owned()));
                        }
                    }
                }
                TargetConfig::Email(m) => {
                    add(key("username_env"), &m.username_env);
                    add(key("password_env"), &m.password_env);
                }
                TargetConfig::Crm(c) => {
                    add(key("token_env"), &c.token_env);
                    if let Some(oauth) = &c.oauth {
                        add(
                            key("oauth.client_id_env"),
                            &Some(oauth.client_id_env.clone()),
                        );
                        add(
                            key("oauth.client_secret_env"),
                            &Some(oauth.client_secret_env.clone()),
                        );
                    }
                }
                TargetConfig::Record(_) => {}
            }
        }
        refs
    }
}

/// Checks tenant ownership: every pipeline names a declared tenant (once
/// any is declared), reads only its tenant's secrets, and passes no secret
/// to its plugin.
pub(super) fn validate(config: &Config, out: &mut Vec<ConfigError>) {
    for (name, tenant) in &config.tenants {
        if !super::validate::is_identifier(name) {
            out.push(ConfigError::new(
                format!("tenants.{name}"),
                "a tenant name is 1-64 of a-z, 0-9, '-' and '_'",
            ));
        }
        for (i, var) in tenant.secrets.iter().enumerate() {
            if !super::validate::is_env_name(var) {
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
        let Some(owner) = config.tenants.get(tenant) else {
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
        };
        for (key, var) in pipeline.secret_references() {
            if !owner.secrets.contains(&var) {
                out.push(ConfigError::new(
                    format!("{prefix}.{key}"),
                    format!(
                        "`{var}` is not one of tenant {tenant}'s secrets (tenants.{tenant}.secrets)"
                    ),
                ));
            }
        }
    }
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
