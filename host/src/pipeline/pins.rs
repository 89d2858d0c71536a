//! Which plugin a pipeline runs when the admin API switched it: tenants'
//! uploaded versions are kept by digest in the plugin store
//! ([`Config::plugin_store`]); a switch is recorded in the state store on a
//! stack per pipeline (a switch pushes, a rollback pops), so it outlives
//! restarts. A version runs only for the tenant that uploaded it.

use crate::config::Config;
use crate::state::StateStore;
use std::path::{Path, PathBuf};

/// Where the stored version `digest` lives.
pub fn stored_version(store: &Path, digest: &str) -> PathBuf {
    store.join(format!("{digest}.wasm"))
}

/// A stored version a pipeline runs.
#[derive(Debug, Clone)]
pub struct Pinned {
    /// Its digest.
    pub digest: String,
    /// Its file in the plugin store.
    pub path: PathBuf,
}

/// The stored version pipeline `name` was switched to, if it was (and not
/// switched back to its config's file since): what the host loads instead
/// of the config's `plugin`. A version that is not the pipeline's tenant's
/// (the pipeline moved to another tenant, or was recreated under its name)
/// or whose file is gone is not loaded: the config's plugin runs, and the
/// log says why.
pub fn pinned_plugin(
    config: &Config,
    state: &dyn StateStore,
    name: &str,
) -> anyhow::Result<Option<Pinned>> {
    let Some(digest) = state
        .plugin_pins(name)?
        .into_iter()
        .next()
        .and_then(|p| p.digest)
    else {
        return Ok(None);
    };
    let tenant = config.tenant_of(&config.pipelines[name]);
    let owned = state
        .plugin_versions(tenant)?
        .iter()
        .any(|v| v.digest == digest);
    let path = stored_version(&config.plugin_store(), &digest);
    if !owned {
        tracing::error!(pipeline = %name, %tenant, version = %digest, "the pipeline was switched to a version its tenant did not upload; running its config's plugin");
        return Ok(None);
    }
    if !path.exists() {
        tracing::error!(pipeline = %name, path = %path.display(), "the version the pipeline was switched to is missing from the plugin store; running its config's plugin");
        return Ok(None);
    }
    Ok(Some(Pinned { digest, path }))
}
