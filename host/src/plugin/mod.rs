//! The plugin runtime: the one wasmtime engine of the process, loading and
//! caching components, and calling them under a pipeline's limits.
//!
//! A [`Runtime`] compiles each component once (cached on disk, keyed by the
//! component's content hash and the engine's compatibility hash) and keeps an
//! `InstancePre`. Every batch call gets a fresh store and instance with its own
//! fuel, epoch deadline and memory cap, so nothing a plugin does in one call
//! (state, a trap, a leak) reaches the next. A batch whose call the sandbox
//! stopped is retried row by row, so only the guilty rows fail.
//!
//! The generated bindings stay private to this module; the contract's types
//! are re-exported in [`contract`].

mod error;
mod limits;
mod sandbox;

pub use error::PluginError;
pub use limits::Limits;

use anyhow::Context as _;
use sandbox::StoreState;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store};

#[allow(missing_docs)] // generated from the documented WIT
mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "pipeline-plugin",
    });
}

/// The contract's types (`freshet:plugin/types`), as the host sees them.
pub mod contract {
    pub use super::bindings::freshet::plugin::types::{
        Action, CrmUpdateRequest, EmailRequest, Event, Instant, PluginError as GuestError, Row,
        RowBatch, Value, WebhookRequest,
    };
}

use bindings::{PipelinePlugin, PipelinePluginPre};
use contract::{Action, Event, GuestError, RowBatch};

/// How often the epoch ticks: the resolution of call deadlines.
const EPOCH_TICK: Duration = Duration::from_millis(10);

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
}

impl Default for EngineSettings {
    fn default() -> Self {
        Self { cache_dir: None, max_instances: 64, max_memory_mib: 512 }
    }
}

/// The process's wasmtime engine and its epoch ticker.
#[derive(Clone)]
pub struct Runtime {
    engine: Engine,
    cache_dir: Option<PathBuf>,
}

impl Runtime {
    /// Builds the engine: component model, fuel, epoch interruption, pooling
    /// allocator; and starts the thread that advances the epoch.
    pub fn new(settings: &EngineSettings) -> anyhow::Result<Self> {
        let mut pool = PoolingAllocationConfig::default();
        let max_memory = usize::try_from(settings.max_memory_mib * 1024 * 1024)?;
        pool.total_component_instances(settings.max_instances)
            .total_core_instances(settings.max_instances * 4)
            .total_memories(settings.max_instances * 2)
            .total_tables(settings.max_instances * 4)
            .max_memory_size(max_memory);
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .consume_fuel(true)
            .epoch_interruption(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config).map_err(anyhow::Error::from).context("creating the wasmtime engine")?;
        let weak = engine.weak();
        std::thread::Builder::new()
            .name("freshet-epoch".into())
            .spawn(move || loop {
                std::thread::sleep(EPOCH_TICK);
                match weak.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => break,
                }
            })
            .context("starting the epoch thread")?;
        if let Some(dir) = &settings.cache_dir {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating the component cache {}", dir.display()))?;
        }
        Ok(Self { engine, cache_dir: settings.cache_dir.clone() })
    }

    /// Loads a component from a file: compiled, or taken from the cache, and
    /// linked against the contract (plus denied WASI if it imports any).
    pub fn load(&self, path: &Path) -> anyhow::Result<Plugin> {
        let bytes =
            std::fs::read(path).with_context(|| format!("reading plugin {}", path.display()))?;
        self.load_bytes(&bytes).with_context(|| format!("loading plugin {}", path.display()))
    }

    /// [`Runtime::load`] from bytes in memory.
    pub fn load_bytes(&self, bytes: &[u8]) -> anyhow::Result<Plugin> {
        let version = hex::encode(Sha256::digest(bytes));
        let component = self.compile(bytes, &version)?;
        let mut linker = Linker::<StoreState>::new(&self.engine);
        PipelinePlugin::add_to_linker::<_, HasSelf<_>>(&mut linker, |state| state)?;
        let ty = component.component_type();
        let uses_wasi = ty.imports(&self.engine).any(|(name, _)| name.starts_with("wasi:"));
        if uses_wasi {
            // Toolchains (Rust std, Python, JavaScript) import WASI whether or
            // not the code uses it; it links, with every capability denied.
            wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
        }
        let pre = linker
            .instantiate_pre(&component)
            .map_err(anyhow::Error::from)
            .context("the component does not fit the freshet:plugin contract")?;
        let pre = PipelinePluginPre::new(pre)
            .map_err(anyhow::Error::from)
            .context("the component does not export the freshet:plugin world")?;
        Ok(Plugin { engine: self.engine.clone(), pre, version, uses_wasi })
    }

    fn compile(&self, bytes: &[u8], version: &str) -> anyhow::Result<Component> {
        let Some(dir) = &self.cache_dir else {
            return Ok(Component::new(&self.engine, bytes)?);
        };
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut hasher);
        let cached = dir.join(format!("{version}-{:016x}.cwasm", hasher.finish()));
        if cached.exists() {
            // SAFETY: the cache directory is the host's own (the operator's
            // config names it); only this function writes it, from
            // `Component::serialize` of the same engine configuration.
            #[allow(unsafe_code)]
            match unsafe { Component::deserialize_file(&self.engine, &cached) } {
                Ok(component) => {
                    tracing::debug!(path = %cached.display(), "compiled component from cache");
                    return Ok(component);
                }
                Err(e) => tracing::warn!(path = %cached.display(), error = %e, "ignoring a bad cache entry"),
            }
        }
        let component = Component::new(&self.engine, bytes)?;
        let tmp = tempfile::NamedTempFile::new_in(dir)?;
        std::fs::write(tmp.path(), component.serialize()?)?;
        tmp.persist(&cached).with_context(|| format!("writing {}", cached.display()))?;
        Ok(component)
    }
}

/// What one pipeline's calls run with.
#[derive(Debug, Clone)]
pub struct CallContext {
    /// The pipeline's name, for the plugin's log lines.
    pub pipeline: Arc<str>,
    /// The pipeline's limits.
    pub limits: Limits,
    /// The plugin's own settings (`get-setting`).
    pub settings: Arc<BTreeMap<String, String>>,
}

/// What a single call used, for `freshet plugin test`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    /// Fuel (≈ wasm instructions) the call consumed.
    pub fuel: u64,
    /// Peak linear memory of the instance, in bytes.
    pub peak_memory: usize,
}

/// A loaded, linked component, ready to instantiate.
#[derive(Clone)]
pub struct Plugin {
    engine: Engine,
    pre: PipelinePluginPre<StoreState>,
    version: String,
    uses_wasi: bool,
}

/// One input's answer: the outputs, or why it failed.
pub type Outcome<T> = Result<Vec<T>, PluginError>;

impl Plugin {
    /// The SHA-256 of the component's bytes: which version produced an event.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Whether the component imports WASI interfaces (linked, all denied).
    pub fn uses_wasi(&self) -> bool {
        self.uses_wasi
    }

    /// Maps rows to events: one outcome per row, in order.
    pub fn map_rows(&self, ctx: &CallContext, batch: &RowBatch) -> Vec<Outcome<Event>> {
        let rows = batch.rows.len();
        self.batched(ctx, rows, |plugin, store, range| {
            if range.len() == rows {
                plugin.call_map_rows(store, batch)
            } else {
                let sub = RowBatch { columns: batch.columns.clone(), rows: batch.rows[range].to_vec() };
                plugin.call_map_rows(store, &sub)
            }
        }, check_event)
    }

    /// Decides the actions for events: one outcome per event, in order.
    pub fn decide(&self, ctx: &CallContext, events: &[Event]) -> Vec<Outcome<Action>> {
        self.batched(ctx, events.len(), |plugin, store, range| {
            plugin.call_decide(store, &events[range])
        }, check_action)
    }

    /// Runs `call` over all `n` inputs in one instance; if the sandbox stops
    /// that call, runs each input alone in a fresh instance so that only the
    /// inputs that cause the failure fail.
    fn batched<T>(
        &self,
        ctx: &CallContext,
        n: usize,
        call: impl Fn(
            &PipelinePlugin,
            &mut Store<StoreState>,
            std::ops::Range<usize>,
        ) -> wasmtime::Result<Vec<Result<Vec<T>, GuestError>>>,
        check: fn(&T) -> Result<usize, String>,
    ) -> Vec<Outcome<T>> {
        if n == 0 {
            return Vec::new();
        }
        match self.call_once(ctx, 0..n, &call, check) {
            Ok((outcomes, _)) => outcomes,
            Err(e) if n == 1 || !e.is_sandbox_failure() => (0..n).map(|_| Err(e.clone())).collect(),
            Err(e) => {
                tracing::debug!(pipeline = %ctx.pipeline, error = %e, rows = n, "batch failed, retrying row by row");
                (0..n)
                    .map(|i| match self.call_once(ctx, i..i + 1, &call, check) {
                        Ok((mut one, _)) => one.pop().unwrap_or_else(|| Ok(Vec::new())),
                        Err(e) => Err(e),
                    })
                    .collect()
            }
        }
    }

    /// One call in a fresh instance with a budget for `range.len()` inputs.
    fn call_once<T>(
        &self,
        ctx: &CallContext,
        range: std::ops::Range<usize>,
        call: &impl Fn(
            &PipelinePlugin,
            &mut Store<StoreState>,
            std::ops::Range<usize>,
        ) -> wasmtime::Result<Vec<Result<Vec<T>, GuestError>>>,
        check: fn(&T) -> Result<usize, String>,
    ) -> Result<(Vec<Outcome<T>>, Usage), PluginError> {
        let n = range.len();
        let budget = ctx.limits.fuel_per_row.saturating_mul(n as u64);
        let mut store = self.store(ctx, budget)?;
        let answer = self
            .pre
            .instantiate(&mut store)
            .and_then(|plugin| call(&plugin, &mut store, range));
        let answer = answer.map_err(|e| classify(e, &store, budget, &ctx.limits))?;
        let usage = Usage {
            fuel: budget - store.get_fuel().unwrap_or(0),
            peak_memory: store.data().meter.peak_memory,
        };
        store.data().finish_call();
        if answer.len() != n {
            return Err(PluginError::Contract(format!(
                "answered {} results for {n} inputs",
                answer.len()
            )));
        }
        let limit = ctx.limits.output_bytes_per_row;
        let outcomes = answer
            .into_iter()
            .map(|result| {
                let outputs = result.map_err(|e| match e {
                    GuestError::Reject(reason) => PluginError::Reject(reason),
                    GuestError::Internal(reason) => PluginError::Guest(reason),
                })?;
                let mut size = 0usize;
                for output in &outputs {
                    size += check(output).map_err(PluginError::Contract)?;
                }
                if size as u64 > limit {
                    return Err(PluginError::OutputTooLarge { size, limit });
                }
                Ok(outputs)
            })
            .collect();
        Ok((outcomes, usage))
    }

    /// Maps and decides one row alone, reporting what each call used.
    /// For `freshet plugin test`.
    pub fn probe(
        &self,
        ctx: &CallContext,
        columns: &[String],
        row: &contract::Row,
    ) -> (Result<(Vec<Event>, Vec<Outcome<Action>>), PluginError>, Usage) {
        let batch = RowBatch { columns: columns.to_vec(), rows: vec![row.clone()] };
        let mapped = self.call_once(ctx, 0..1, &|p, s, _| p.call_map_rows(s, &batch), check_event);
        let (mut outcomes, map_usage) = match mapped {
            Ok(ok) => ok,
            Err(e) => return (Err(e), Usage::default()),
        };
        let events = match outcomes.pop() {
            Some(Ok(events)) => events,
            Some(Err(e)) => return (Err(e), map_usage),
            None => Vec::new(),
        };
        let mut usage = map_usage;
        let mut actions = Vec::with_capacity(events.len());
        for event in &events {
            let one = std::slice::from_ref(event);
            match self.call_once(ctx, 0..1, &|p, s, _| p.call_decide(s, one), check_action) {
                Ok((mut out, u)) => {
                    usage.fuel += u.fuel;
                    usage.peak_memory = usage.peak_memory.max(u.peak_memory);
                    actions.push(out.pop().unwrap_or_else(|| Ok(Vec::new())));
                }
                Err(e) => actions.push(Err(e)),
            }
        }
        (Ok((events, actions)), usage)
    }

    fn store(&self, ctx: &CallContext, fuel: u64) -> Result<Store<StoreState>, PluginError> {
        let mut store = Store::new(&self.engine, StoreState::new(ctx));
        store.limiter(|state| &mut state.meter);
        store.set_fuel(fuel).map_err(|e| PluginError::Trap(e.to_string()))?;
        let ticks = ctx.limits.timeout_ms.div_ceil(EPOCH_TICK.as_millis() as u64) + 1;
        store.set_epoch_deadline(ticks);
        store.epoch_deadline_trap();
        Ok(store)
    }
}

/// Names a failed call for what stopped it.
fn classify(err: wasmtime::Error, store: &Store<StoreState>, budget: u64, limits: &Limits) -> PluginError {
    let meter = &store.data().meter;
    match err.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::OutOfFuel) => return PluginError::OutOfFuel { budget },
        Some(wasmtime::Trap::Interrupt) => return PluginError::Timeout(limits.timeout()),
        _ => {}
    }
    // A refused `memory.grow` returns -1 to the guest, whose allocator then
    // aborts with a trap of its own: name the cause, not the symptom.
    if let Some(requested) = meter.memory_denied {
        return PluginError::MemoryExceeded { requested, cap: meter.memory_cap() };
    }
    if let Some(requested) = meter.table_denied {
        return PluginError::TableExceeded { requested };
    }
    PluginError::Trap(format!("{err:#}"))
}

/// An event's body must be a JSON object and must not set `_id` or
/// `timestamp` itself (the host writes them from the typed fields).
fn check_event(event: &Event) -> Result<usize, String> {
    let fields: BTreeMap<std::borrow::Cow<'_, str>, serde::de::IgnoredAny> =
        serde_json::from_str(&event.body)
            .map_err(|e| format!("event {} body is not a JSON object: {e}", event.id))?;
    if fields.contains_key("_id") || fields.contains_key("timestamp") {
        return Err(format!("event {} body sets `_id` or `timestamp`; use the event's fields", event.id));
    }
    if event.id.is_empty() {
        return Err("an event has an empty id".to_owned());
    }
    Ok(event.body.len() + event.id.len())
}

/// An action's JSON fields must be JSON objects (webhook bodies: any JSON).
fn check_action(action: &Action) -> Result<usize, String> {
    use serde::de::IgnoredAny;
    let object = |what: &str, text: &str| {
        serde_json::from_str::<BTreeMap<std::borrow::Cow<'_, str>, IgnoredAny>>(text)
            .map(|_| text.len())
            .map_err(|e| format!("{what} is not a JSON object: {e}"))
    };
    match action {
        Action::Email(e) => object("e-mail variables", &e.variables),
        Action::Webhook(w) => serde_json::from_str::<IgnoredAny>(&w.body)
            .map(|_| w.body.len())
            .map_err(|e| format!("webhook body is not JSON: {e}")),
        Action::CrmUpdate(c) => object("CRM fields", &c.fields),
    }
}
