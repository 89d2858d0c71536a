//! Hot reload: a pipeline's plugin file is watched, and a new version is
//! loaded off the pipeline's path (on the blocking pool, under the engine's
//! size and compile-time limits) and swapped in for the next page. The page
//! in flight finishes on the version it started with; a version that fails
//! to load leaves the running one in place and says why. The path itself
//! can change too (the config file now names another plugin): it arrives
//! through a `watch` channel and is loaded the same way.
//!
//! Watching is a cheap `stat` every `engine.reload_interval_ms`: it works
//! the same for a file rewritten in place, replaced by a rename, or on a
//! network share where change notifications do not arrive.

use super::{Runtime, Sandbox};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// What the watcher did, for [`crate::Stats`].
#[derive(Debug, Default)]
pub struct ReloadCounts {
    /// New versions swapped in.
    pub reloads: AtomicU64,
    /// New versions that failed to load (the old one kept running).
    pub failures: AtomicU64,
}

/// Watches the plugin file `path` names until `shutdown`, swapping new
/// versions into `sandbox`.
pub async fn watch(
    runtime: Runtime,
    sandbox: Sandbox,
    mut path: watch::Receiver<PathBuf>,
    every: Duration,
    counts: Arc<ReloadCounts>,
    shutdown: CancellationToken,
) {
    let pipeline = sandbox.context().pipeline.clone();
    let tenant = sandbox.context().tenant.clone();
    let mut seen = stamp(&path.borrow_and_update());
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = shutdown.cancelled() => return,
        }
        if path.has_changed().unwrap_or(false) {
            // Another file: whatever it holds is worth a load.
            seen = None;
        }
        let path = path.borrow_and_update().clone();
        let now = stamp(&path);
        if now == seen || now.is_none() {
            // Unchanged, or gone for the moment (a replace in progress): the
            // running version stays.
            continue;
        }
        seen = now;
        let loading = {
            let (runtime, path) = (runtime.clone(), path.clone());
            tokio::task::spawn_blocking(move || runtime.load(&path))
        };
        let running = sandbox.plugin();
        match loading.await {
            Ok(Ok(plugin)) if plugin.version() == running.version() => {}
            Ok(Ok(plugin)) => {
                let version = plugin.version()[..12].to_owned();
                let old = sandbox.swap(plugin);
                counts.reloads.fetch_add(1, Ordering::Relaxed);
                tracing::info!(%tenant, %pipeline, from = &old.version()[..12], to = %version, "plugin reloaded; the next page uses the new version");
            }
            Ok(Err(e)) => {
                counts.failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(%tenant, %pipeline, path = %path.display(), error = %e, running = &running.version()[..12], "new plugin version refused; the running version stays");
            }
            Err(e) => {
                counts.failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(%tenant, %pipeline, error = %e, "loading the new plugin version failed");
            }
        }
    }
}

/// What tells a changed file apart: size and modification time.
pub(crate) fn stamp(path: &std::path::Path) -> Option<(u64, SystemTime)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.len(), meta.modified().ok()?))
}
