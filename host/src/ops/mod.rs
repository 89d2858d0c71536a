//! The operations surface of a running host, served by one HTTP server when
//! the config has `[admin]`:
//!
//! - `/metrics`: Prometheus metrics ([`crate::metrics`]);
//! - `/healthz` (the process answers) and `/readyz` (the state store answers
//!   and every pipeline runs; otherwise what is not, by name);
//! - `/api/v1/…`: the admin API ([`api`], [`plugins`]), every call
//!   authenticated ([`auth`]): pipelines, pause and resume, offsets, dead
//!   letters, plugin versions, dry runs; errors as problem documents
//!   ([`problem`]); its OpenAPI description at `/api/v1/openapi.json`;
//! - `/`: the status page, which reads the API with the visitor's token.
//!
//! The pipelines write their side through [`control::PipelineControl`]; the
//! server only reads it and asks (pause, switch a plugin).

mod api;
pub mod auth;
pub mod control;
mod plugins;
pub mod problem;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::pipeline::Host;
use crate::plugin::Runtime;
use crate::state::StateStore;
use anyhow::Context as _;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use control::{Phase, PipelineControl};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// What every handler shares.
pub(crate) struct AdminState {
    config: Config,
    pipelines: BTreeMap<String, Arc<PipelineControl>>,
    state: Arc<dyn StateStore>,
    runtime: Runtime,
    registry: Option<prometheus_client::registry::Registry>,
    tokens: auth::Tokens,
    /// Stored plugin versions, `<digest>.wasm`.
    store: std::path::PathBuf,
    /// The config file the host runs (read again where its current plugin
    /// paths matter), if it runs one.
    config_file: Option<std::path::PathBuf>,
    /// Uploads and dry runs compile and run plugins off the pipelines'
    /// threads: a few at a time.
    heavy: tokio::sync::Semaphore,
}

type Shared = Arc<AdminState>;

/// Uploads and dry runs at once; more wait their turn.
const HEAVY_AT_ONCE: usize = 2;

/// A running operations server.
pub struct Server {
    /// The address it listens on.
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
    stop: CancellationToken,
}

impl Server {
    /// Stops serving (requests in flight finish).
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// Binds `[admin] listen` and serves the host's pipelines until stopped;
/// `file` is the config file the host runs, if any. Errors name the config
/// key (a token variable unset, an address in use).
pub async fn start(
    config: &Config,
    file: Option<&std::path::Path>,
    host: &Host,
    metrics: Option<&Metrics>,
) -> anyhow::Result<Server> {
    let settings = config.admin.as_ref().context("no [admin] table")?;
    let tokens = auth::Tokens::from_env(config)?;
    let store = config.plugin_store();
    std::fs::create_dir_all(&store)
        .with_context(|| format!("admin.plugin_store: {}", store.display()))?;
    let admin = Arc::new(AdminState {
        config: config.clone(),
        pipelines: host
            .pipelines
            .iter()
            .map(|p| (p.name().to_owned(), p.control().clone()))
            .collect(),
        state: host.state.clone(),
        runtime: host.runtime.clone(),
        registry: metrics.map(Metrics::registry),
        tokens,
        store,
        config_file: file.map(ToOwned::to_owned),
        heavy: tokio::sync::Semaphore::new(HEAVY_AT_ONCE),
    });
    let listener = tokio::net::TcpListener::bind(&settings.listen)
        .await
        .with_context(|| format!("admin.listen: cannot listen on {}", settings.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "admin server listening");
    let stop = CancellationToken::new();
    let task = tokio::spawn({
        let stop = stop.clone();
        async move {
            let served = axum::serve(listener, router(admin))
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "admin server stopped");
            }
        }
    });
    Ok(Server { addr, task, stop })
}

fn router(admin: Shared) -> Router {
    Router::new()
        .route("/", get(status_page))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .nest("/api/v1", api::routes().merge(plugins::routes()))
        .fallback(|| async { problem::Problem::not_found("no such resource") })
        .with_state(admin)
}

async fn status_page() -> Html<&'static str> {
    Html(include_str!("status.html"))
}

async fn metrics(axum::extract::State(admin): axum::extract::State<Shared>) -> Response {
    let Some(registry) = &admin.registry else {
        return problem::Problem::not_found("metrics are off (admin.metrics = false)")
            .into_response();
    };
    let mut text = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, registry) {
        return problem::Problem::internal(e).into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// Ready when the state store answers and every pipeline runs (or is
/// paused on purpose); otherwise 503 with what is not, by name.
async fn readyz(axum::extract::State(admin): axum::extract::State<Shared>) -> Response {
    let mut problems = Vec::new();
    let state = admin.state.clone();
    match tokio::task::spawn_blocking(move || state.check()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => problems.push(format!("{e}")),
        Err(e) => problems.push(format!("state store: {e}")),
    }
    for (name, p) in &admin.pipelines {
        let status = p.status();
        match status.phase {
            Phase::Running | Phase::Paused | Phase::Pausing | Phase::Elsewhere => {}
            phase => {
                let phase = serde_json::to_value(phase).unwrap_or_default();
                let phase = phase.as_str().unwrap_or("?");
                problems.push(match status.error {
                    Some(e) => format!("pipeline {name}: {phase}: {e}"),
                    None => format!("pipeline {name}: {phase}"),
                });
            }
        }
    }
    let ready = problems.is_empty();
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        axum::Json(serde_json::json!({"ready": ready, "problems": problems})),
    )
        .into_response()
}
