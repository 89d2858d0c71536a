//! Plugin versions through the admin API. A tenant uploads a component; it
//! is checked as a plugin file is (size, compile time, contract), kept by
//! content hash in the plugin store, and recorded as the tenant's. It goes
//! live on a pipeline only when the pipeline is pointed at it (`PUT
//! …/plugin`): swapped in for the next page — the page in flight finishes
//! on the version it started with, so nothing is lost or repeated — and
//! remembered in the state store, so a restart keeps it. A rollback undoes
//! the last switch. A dry run (`POST …/test`) runs given
//! rows through any of the tenant's versions, touching nothing.

use super::auth::Caller;
use super::problem::{json_body, Problem};
use super::{AdminState, Shared};
use crate::pipeline::pins::stored_version;
use crate::plugin::{CallContext, LoadError, Plugin, Sandbox};
use crate::state::PluginVersion;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use std::path::PathBuf;

pub(super) fn routes() -> Router<Shared> {
    Router::new()
        .route(
            "/tenants/{tenant}/plugins",
            get(versions)
                .post(upload)
                .layer(DefaultBodyLimit::disable()),
        )
        .route("/pipelines/{name}/plugin", put(switch).delete(unpin))
        .route("/pipelines/{name}/plugin/rollback", post(rollback))
        .route("/pipelines/{name}/test", post(dry_run))
}

fn tenant_of<'a>(
    caller: &Caller,
    admin: &'a AdminState,
    tenant: &'a str,
) -> Result<&'a str, Problem> {
    let known = admin.config.tenants.contains_key(tenant)
        || (admin.config.tenants.is_empty() && tenant == crate::config::DEFAULT_TENANT);
    if known && caller.may(tenant) {
        Ok(tenant)
    } else {
        Err(Problem::not_found(format!("no tenant `{tenant}`")))
    }
}

async fn versions(
    State(admin): State<Shared>,
    caller: Caller,
    Path(tenant): Path<String>,
) -> Result<Json<Value>, Problem> {
    let tenant = tenant_of(&caller, &admin, &tenant)?;
    let versions = admin.state.plugin_versions(tenant)?;
    Ok(Json(json!({ "versions": versions })))
}

/// A load failure as the uploader reads it.
fn refused(e: &LoadError) -> Problem {
    let status = match e {
        LoadError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        LoadError::Read { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::UNPROCESSABLE_ENTITY,
    };
    Problem::new(status, e.to_string()).field("body")
}

/// Uploads a component (the request body, `application/wasm`): 201 with
/// its digest; the same bytes again: 200. Nothing changes when it is
/// refused.
async fn upload(
    State(admin): State<Shared>,
    caller: Caller,
    Path(tenant): Path<String>,
    body: axum::body::Body,
) -> Result<Response, Problem> {
    let tenant = tenant_of(&caller, &admin, &tenant)?.to_owned();
    let _turn = admin.heavy.acquire().await.map_err(Problem::internal)?;
    let limit = admin.config.engine.max_component_bytes;
    let bytes = axum::body::to_bytes(body, limit as usize + 1)
        .await
        .map_err(|_| {
            refused(&LoadError::TooLarge {
                size: limit + 1,
                limit,
            })
        })?;
    if bytes.len() as u64 > limit {
        return Err(refused(&LoadError::TooLarge {
            size: bytes.len() as u64,
            limit,
        }));
    }
    let runtime = admin.runtime.clone();
    let data = bytes.clone();
    let plugin = tokio::task::spawn_blocking(move || runtime.load_bytes(&data))
        .await
        .map_err(Problem::internal)?
        .map_err(|e| refused(&e))?;
    let digest = plugin.version().to_owned();
    let path = stored_version(&admin.store, &digest);
    if !path.exists() {
        write_atomically(&path, &bytes).map_err(Problem::internal)?;
    }
    let contract = serde_json::to_value(plugin.contract()).map_err(Problem::internal)?;
    let known = admin.state.plugin_versions(&tenant)?;
    let new = !known.iter().any(|v| v.digest == digest);
    let version = PluginVersion {
        tenant: tenant.clone(),
        digest: digest.clone(),
        size: bytes.len() as u64,
        contract: contract.as_str().unwrap_or("?").to_owned(),
        uploaded_ms: crate::source::Timestamp::now().0 / 1_000_000,
    };
    admin.state.add_plugin_version(&version)?;
    tracing::info!(%tenant, version = %&digest[..12], size = bytes.len(), new, "plugin version uploaded");
    let status = if new {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(json!(version))).into_response())
}

fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    let mut file = tempfile::NamedTempFile::new_in(dir)?;
    file.write_all(bytes)?;
    file.as_file().sync_all()?;
    file.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SwitchRequest {
    /// The digest of one of the tenant's uploaded versions.
    version: String,
}

impl AdminState {
    /// The stored file of `digest` if it is `tenant`'s.
    fn version_file(&self, tenant: &str, digest: &str) -> Result<PathBuf, Problem> {
        let owned = self.state.plugin_versions(tenant)?;
        if !owned.iter().any(|v| v.digest == digest) {
            return Err(Problem::not_found(format!(
                "tenant `{tenant}` has no plugin version `{digest}`"
            ))
            .field("version"));
        }
        Ok(stored_version(&self.store, digest))
    }

    /// Loads `path` and makes it the pipeline's plugin from its next page,
    /// then records the change (`record`). The caller holds the pipeline's
    /// steering lock, so switches never interleave.
    async fn switch_to(
        &self,
        name: &str,
        path: PathBuf,
        record: Record<'_>,
    ) -> Result<Value, Problem> {
        let p = &self.pipelines[name];
        let plugin = self.load(path.clone()).await?;
        let version = plugin.version().to_owned();
        let running = match record {
            Record::Push(digest) => {
                self.state.pin_plugin(name, digest)?;
                digest
            }
            Record::Pop { running } => {
                self.state.pop_plugin_pin(name)?;
                running
            }
        };
        p.set_pinned(running.map(ToOwned::to_owned));
        let old = p.sandbox.swap(plugin);
        if let Some(watched) = &p.watched_plugin {
            watched.send_replace(path);
        }
        tracing::info!(pipeline = %name, from = &old.version()[..12], to = &version[..12], "plugin version switched; the next page uses it");
        Ok(json!({"pipeline": name, "version": version, "previous": old.version()}))
    }

    /// Loads a plugin file (off the async threads: compiling takes time).
    async fn load(&self, path: PathBuf) -> Result<Plugin, Problem> {
        let runtime = self.runtime.clone();
        tokio::task::spawn_blocking(move || runtime.load(&path))
            .await
            .map_err(Problem::internal)?
            .map_err(|e| refused(&e))
    }

    /// The plugin file the pipeline's config names now: the config file is
    /// read again (it may have changed since start), and the tenant's
    /// `plugin_dir` checked, as at start.
    fn config_plugin(&self, name: &str) -> Result<PathBuf, Problem> {
        let fresh;
        let config = match &self.config_file {
            Some(file) => {
                fresh = crate::config::load_explained(file).map_err(|e| {
                    Problem::conflict(format!(
                        "the config file does not load, so its plugin is unknown: {e:#}"
                    ))
                })?;
                &fresh
            }
            None => &self.config,
        };
        let pipeline = config.pipelines.get(name).ok_or_else(|| {
            Problem::conflict(format!("the config file no longer has pipeline `{name}`"))
        })?;
        crate::pipeline::check_plugin_dir(config, name)
            .map_err(|e| Problem::conflict(format!("{e:#}")))?;
        Ok(pipeline.plugin.clone())
    }
}

/// How a switch is recorded.
enum Record<'a> {
    /// A new switch: to this version, or (`None`) to the config's file.
    Push(Option<&'a str>),
    /// A rollback: the last switch undone, back to `running` (`None`: the
    /// config's file).
    Pop {
        /// The version it runs again.
        running: Option<&'a str>,
    },
}

/// Points a pipeline at one of its tenant's versions.
async fn switch(
    State(admin): State<Shared>,
    caller: Caller,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, Problem> {
    let p = admin.pipeline(&caller, &name)?.clone();
    let request: SwitchRequest = json_body(&body)?;
    let path = admin.version_file(&p.tenant, &request.version)?;
    let _steering = super::api::steer(&p).await?;
    let record = Record::Push(Some(&request.version));
    Ok(Json(admin.switch_to(&name, path, record).await?))
}

/// Points a pipeline back at its config's plugin file.
async fn unpin(
    State(admin): State<Shared>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Value>, Problem> {
    let p = admin.pipeline(&caller, &name)?.clone();
    let _steering = super::api::steer(&p).await?;
    let path = admin.config_plugin(&name)?;
    Ok(Json(
        admin.switch_to(&name, path, Record::Push(None)).await?,
    ))
}

/// Undoes the pipeline's last switch: back to the version it ran before
/// (again and again, down to its config's file).
async fn rollback(
    State(admin): State<Shared>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Value>, Problem> {
    let p = admin.pipeline(&caller, &name)?.clone();
    let _steering = super::api::steer(&p).await?;
    let pins = admin.state.plugin_pins(&name)?;
    if pins.is_empty() {
        return Err(Problem::conflict(format!(
            "pipeline `{name}` runs its config's plugin: there is no switch to roll back"
        )));
    }
    // Below the stack's bottom, the pipeline ran its config's file.
    let running = pins.get(1).and_then(|pin| pin.digest.as_deref());
    let path = match running {
        Some(digest) => stored_version(&admin.store, digest),
        None => admin.config_plugin(&name)?,
    };
    Ok(Json(
        admin
            .switch_to(&name, path, Record::Pop { running })
            .await?,
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TestRequest {
    /// Rows as in a rows file: objects keyed by column (see `freshet plugin
    /// test`).
    rows: Value,
    /// One of the tenant's versions; the pipeline's current one by default.
    version: Option<String>,
}

/// Runs rows through a version with the pipeline's settings and limits, in
/// a sandbox of its own: no source, no destination, no actions, no state.
async fn dry_run(
    State(admin): State<Shared>,
    caller: Caller,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, Problem> {
    let p = admin.pipeline(&caller, &name)?.clone();
    let request: TestRequest = json_body(&body)?;
    let _turn = admin.heavy.acquire().await.map_err(Problem::internal)?;
    let (columns, rows) = crate::plugin::rows_file::from_json(request.rows)
        .map_err(|e| Problem::bad_request(format!("{e:#}")).field("rows"))?;
    let plugin = match &request.version {
        Some(digest) => admin.load(admin.version_file(&p.tenant, digest)?).await?,
        None => p.sandbox.plugin(),
    };
    let config = &admin.config.pipelines[&name];
    let ctx = CallContext::new(
        &p.tenant,
        &format!("{name}/test"),
        config.limits.clone(),
        config.plugin_settings.clone(),
        config.grants,
    );
    let version = plugin.version().to_owned();
    let reports = tokio::task::spawn_blocking(move || {
        let sandbox = Sandbox::new(plugin, ctx);
        crate::cli::plugin_test::dry_run(&sandbox, &columns, &rows)
    })
    .await
    .map_err(Problem::internal)?;
    let failed = reports
        .iter()
        .filter(|r| crate::cli::plugin_test::failed(r))
        .count();
    Ok(Json(
        json!({"version": version, "failed": failed, "rows": reports}),
    ))
}
