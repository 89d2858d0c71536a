//! The plugin runtime: the contract's bindings, and where to find each part.
//!
//! - [`runtime`]: the one wasmtime engine; loading components (limits, disk
//!   cache, one copy per content hash).
//! - [`sandbox`]: one pipeline's plugin, its warm instance and its calls
//!   under the pipeline's [`Limits`]; [`calls`]: the one retry policy over
//!   batches (whole, then input by input).
//! - [`scheduler`]: the plugin threads, and fair use of them across tenants.
//! - [`reload`]: swapping a pipeline's plugin when its file changes.
//! - `store`: what a plugin reaches from inside its store (imports, WASI
//!   with nothing granted); [`logs`]: its log lines, rate-limited.
//!
//! The generated bindings stay private to this module; the contract's types
//! are re-exported in [`contract`].

mod call;
pub mod calls;
mod check;
mod error;
mod json;
mod limits;
pub mod logs;
mod probe;
pub mod reload;
pub mod rows_file;
mod runtime;
mod sandbox;
pub mod scheduler;
mod store;
mod timing;

pub use error::{FailureCounts, PluginError};
pub use limits::{Grants, Limits};
pub use probe::Probe;
pub use runtime::{LoadError, Origin, Plugin, Runtime};
pub use sandbox::{Attempt, Decided, Outcome, Sandbox, Session};
pub use timing::Timing;

use logs::LogRoute;
use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

#[allow(missing_docs)] // generated from the documented WIT
mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "pipeline-plugin",
        // A log call past the call's budget stops the call.
        imports: { "freshet:plugin/host.log": trappable },
        // Dead letters compare actions (tests, and replays' round trips).
        additional_derives: [PartialEq],
    });
}

/// Contract 0.2 (`wit/0.2`): its `types` are 0.1's, mapped onto the same
/// Rust types, so rows and events cross either contract without conversion.
#[allow(missing_docs)] // generated from the documented WIT
mod bindings_v2 {
    wasmtime::component::bindgen!({
        path: "../wit/0.2",
        world: "pipeline-plugin",
        imports: { "freshet:plugin/host.log": trappable },
        with: { "freshet:plugin/types": super::bindings::freshet::plugin::types },
    });
}

/// Contract 0.2's JSON world (`pipeline-plugin-json`): the same `types` and
/// `host`, `process` as JSON documents.
#[allow(missing_docs)] // generated from the documented WIT
mod bindings_json {
    wasmtime::component::bindgen!({
        path: "../wit/0.2",
        world: "pipeline-plugin-json",
        with: {
            "freshet:plugin/types": super::bindings::freshet::plugin::types,
            "freshet:plugin/host": super::bindings_v2::freshet::plugin::host,
        },
    });
}

/// The contract's types (`freshet:plugin/types`), as the host sees them.
pub mod contract {
    pub use super::bindings::freshet::plugin::types::{
        Action, CrmUpdateRequest, EmailRequest, Event, Instant, PluginError as GuestError, Row,
        RowBatch, Value, WebhookRequest,
    };
    pub use super::bindings_v2::freshet::plugin::decisions::DecidedEvent;

    /// The contract versions the host links.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
    pub enum Version {
        /// `map-rows`, then `decide`: a row crosses the boundary twice.
        #[serde(rename = "0.1")]
        V0_1,
        /// `process`: a row's events and their actions from one call.
        #[serde(rename = "0.2")]
        V0_2,
        /// `process-json`: the same, rows and answers as JSON documents.
        #[serde(rename = "0.2-json")]
        V0_2Json,
    }

    impl Version {
        /// Whether a row crosses the boundary once (`process`, either form)
        /// rather than twice (`map-rows`, then `decide`).
        pub fn crosses_once(self) -> bool {
            self != Version::V0_1
        }
    }
}

/// Engine-wide settings (`[engine]` in the config).
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineSettings {
    /// Where compiled components are cached; none disables the cache.
    pub cache_dir: Option<PathBuf>,
    /// Instances the pooling allocator keeps slots for: the most plugin calls
    /// that can be in flight at once across all pipelines.
    pub max_instances: u32,
    /// The largest linear memory any pipeline may grant, in MiB; each
    /// pipeline's `limits.memory_mib` must fit under it.
    pub max_memory_mib: u64,
    /// The largest component file accepted, in bytes.
    pub max_component_bytes: u64,
    /// How long compiling one component may take, in milliseconds; longer
    /// is refused.
    pub compile_timeout_ms: u64,
    /// Plugin threads per priority class; 0 means one per CPU core.
    pub threads: usize,
    /// The share of its fuel budget (0–1, over the last second) past which
    /// a pipeline's plugin calls run at background priority.
    pub heavy_fuel_share: f64,
    /// How often each pipeline's plugin file is checked for a new version,
    /// in milliseconds; 0 turns hot reload off.
    pub reload_interval_ms: u64,
}

impl Default for EngineSettings {
    fn default() -> Self {
        Self {
            cache_dir: None,
            max_instances: 64,
            max_memory_mib: 512,
            max_component_bytes: 64 * 1024 * 1024,
            compile_timeout_ms: 120_000,
            threads: 0,
            heavy_fuel_share: 0.5,
            reload_interval_ms: 1_000,
        }
    }
}

impl EngineSettings {
    /// Plugin threads per class: `threads`, or one per core.
    pub fn plugin_threads(&self) -> usize {
        match self.threads {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        }
    }
}

/// What one pipeline's calls run with.
#[derive(Debug, Clone)]
pub struct CallContext {
    /// The tenant owning the pipeline.
    pub tenant: Arc<str>,
    /// The pipeline's name.
    pub pipeline: Arc<str>,
    /// The pipeline's limits.
    pub limits: Limits,
    /// The plugin's own settings (`get-setting`).
    pub settings: Arc<BTreeMap<String, String>>,
    /// Ambient capabilities granted (none by default).
    pub grants: Grants,
    /// Where the plugin's log lines go.
    pub logs: Arc<LogRoute>,
    /// Calls that may run at once, each on its own instance (the
    /// pipeline's `instances`; 1 unless set).
    pub instances: usize,
}

impl CallContext {
    /// The context of one pipeline's plugin.
    pub fn new(
        tenant: &str,
        pipeline: &str,
        limits: Limits,
        settings: BTreeMap<String, String>,
        grants: Grants,
    ) -> Self {
        let (tenant, pipeline): (Arc<str>, Arc<str>) = (tenant.into(), pipeline.into());
        let logs = Arc::new(LogRoute::new(
            tenant.clone(),
            pipeline.clone(),
            limits.log_lines_per_second,
        ));
        Self {
            tenant,
            pipeline,
            limits,
            settings: Arc::new(settings),
            grants,
            logs,
            instances: 1,
        }
    }
}

/// What a single call used, for `freshet plugin test`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    /// Fuel (≈ wasm instructions) the call consumed.
    pub fuel: u64,
    /// The fuel it was allowed ([`Limits::budget`] of its inputs).
    pub budget: u64,
    /// Of `fuel` and `budget`, the map call's, when a probe made several
    /// calls (`freshet plugin test` shows map and decide apart).
    pub map: Option<(u64, u64)>,
    /// Peak linear memory of the instance, in bytes.
    pub peak_memory: usize,
    /// Where the time went, for a timed call (a probe's).
    pub timing: Option<Timing>,
}

/// The `_id` the host gives an event its plugin left empty: the SHA-256 of
/// `{identity}#{index}` in 64 hex digits, where `index` counts the row's
/// events from 0. It depends on the row's identity and the event's place
/// only, so every replay of the row sends the same `_id`.
pub fn derived_id(identity: &str, index: usize) -> String {
    let mut hash = Sha256::new();
    hash.update(identity.as_bytes());
    hash.update(b"#");
    hash.update(itoa::Buffer::new().format(index).as_bytes());
    hex::encode(hash.finalize())
}
