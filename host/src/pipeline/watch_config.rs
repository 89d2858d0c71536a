//! Watching the config file of a running host: a pipeline whose `plugin`
//! now names another file switches to it (loaded and swapped in by the
//! pipeline's own reload watcher, see [`crate::plugin::reload`]). Everything
//! else in the file takes effect at the next restart, and the log says so;
//! a file that does not load or validate changes nothing. A pipeline
//! switched to an uploaded version through the admin API keeps it: the
//! config's `plugin` applies again once the switch is undone.

use super::build::check_plugin_dir;
use crate::config::Config;
use crate::plugin::reload::stamp;
use crate::state::StateStore;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Each running pipeline's name and the channel of its plugin path.
type PluginPaths = Vec<(String, watch::Sender<PathBuf>)>;

/// Watches `path` every `every` until `shutdown`.
pub(super) async fn watch(
    path: PathBuf,
    plugins: PluginPaths,
    state: Arc<dyn StateStore>,
    every: Duration,
    shutdown: CancellationToken,
) {
    let mut seen = stamp(&path);
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = shutdown.cancelled() => return,
        }
        let now = stamp(&path);
        if now == seen || now.is_none() {
            continue;
        }
        seen = now;
        match crate::config::load(&path) {
            Ok(config) => apply(&config, &plugins, state.as_ref()),
            Err(e) => {
                tracing::error!(config = %path.display(), error = %e, "the changed config is refused; the running one stays")
            }
        }
    }
}

/// Sends each pipeline its new plugin path, if it changed and is allowed.
fn apply(config: &Config, plugins: &PluginPaths, state: &dyn StateStore) {
    for (name, current) in plugins {
        let Some(pipeline) = config.pipelines.get(name) else {
            tracing::warn!(pipeline = %name, "the config no longer has this pipeline; it runs until restart");
            continue;
        };
        if *current.borrow() == pipeline.plugin {
            continue;
        }
        match super::pins::pinned_plugin(config, state, name) {
            Ok(None) => {}
            Ok(Some(_)) => {
                tracing::info!(pipeline = %name, "switched to an uploaded version through the admin API: the config's plugin applies once that is undone");
                continue;
            }
            Err(e) => {
                tracing::error!(pipeline = %name, error = %format!("{e:#}"), "cannot tell whether the pipeline was switched; its plugin stays");
                continue;
            }
        }
        match check_plugin_dir(config, name) {
            Ok(()) => {
                tracing::info!(pipeline = %name, plugin = %pipeline.plugin.display(), "the config names another plugin; loading it");
                current.send_replace(pipeline.plugin.clone());
            }
            Err(e) => {
                tracing::error!(pipeline = %name, error = %format!("{e:#}"), "the new plugin path is refused")
            }
        }
    }
    let added: Vec<&str> = config
        .pipelines
        .keys()
        .filter(|name| !plugins.iter().any(|(running, _)| running == *name))
        .map(String::as_str)
        .collect();
    if !added.is_empty() {
        tracing::warn!(pipelines = ?added, "new pipelines in the config start at the next restart");
    }
    tracing::info!(
        "config change applied: plugin paths switch now; any other change takes effect at restart"
    );
}
