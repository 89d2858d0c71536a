//! `[admin]`: the operations server — Prometheus metrics, health, the admin
//! API and the status page — off unless the table is present.

use super::check::{is_env_name, ConfigError};
use super::Config;
use serde::Deserialize;
use std::path::PathBuf;

/// `[admin]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// The address the server listens on, `IP:PORT` (e.g. `127.0.0.1:9464`;
    /// port 0 picks a free one and logs it).
    pub listen: String,
    /// The environment variable holding the operator's token, which may see
    /// and change everything. Tenants' tokens are named by
    /// `tenants.NAME.admin_token_env`; each sees only its tenant.
    pub operator_token_env: String,
    /// Where uploaded plugin versions are kept, by content hash. Default:
    /// `plugin-versions` beside the state database.
    pub plugin_store: Option<PathBuf>,
    /// Export Prometheus metrics at `/metrics` (default `true`).
    #[serde(default = "yes")]
    pub metrics: bool,
}

fn yes() -> bool {
    true
}

impl Config {
    /// The folder of stored plugin versions: `admin.plugin_store`, or
    /// `plugin-versions` beside the state database.
    pub fn plugin_store(&self) -> PathBuf {
        let configured = self.admin.as_ref().and_then(|a| a.plugin_store.clone());
        configured.unwrap_or_else(|| {
            let state = &self.state.path;
            state
                .parent()
                .unwrap_or(std::path::Path::new("."))
                .join("plugin-versions")
        })
    }
}

/// Checks `[admin]` and the tenants' token variables.
pub(super) fn validate(config: &Config, out: &mut Vec<ConfigError>) {
    let Some(admin) = &config.admin else {
        for (name, tenant) in &config.tenants {
            if tenant.admin_token_env.is_some() {
                out.push(ConfigError::new(
                    format!("tenants.{name}.admin_token_env"),
                    "set, but there is no [admin] table: the admin API is off",
                ));
            }
        }
        return;
    };
    if admin.plugin_store.is_none() && config.state.kind == super::StateKind::Postgres {
        out.push(ConfigError::new(
            "admin.plugin_store",
            "missing: with state.kind = \"postgres\" there is no state file to keep uploaded \
             versions beside; name a folder every host of the config reads",
        ));
    }
    if let Err(e) = admin.listen.parse::<std::net::SocketAddr>() {
        out.push(ConfigError::new(
            "admin.listen",
            format!("{:?} is not IP:PORT ({e})", admin.listen),
        ));
    }
    let vars = std::iter::once((
        "admin.operator_token_env".to_owned(),
        &admin.operator_token_env,
    ))
    .chain(config.tenants.iter().filter_map(|(name, t)| {
        let var = t.admin_token_env.as_ref()?;
        Some((format!("tenants.{name}.admin_token_env"), var))
    }));
    let mut seen = std::collections::BTreeMap::new();
    for (key, var) in vars {
        if !is_env_name(var) {
            out.push(ConfigError::new(
                key,
                format!("{var:?} is not an environment variable name"),
            ));
        } else if let Some(first) = seen.insert(var.clone(), key.clone()) {
            out.push(ConfigError::new(
                key,
                format!("{var} is already {first}: every caller needs a token of its own"),
            ));
        }
    }
}
