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

mod check;
mod error;
mod limits;
mod sandbox;

pub use error::PluginError;
pub use limits::Limits;

use anyhow::Context as _;
use check::{check_action, check_event};
use sandbox::StoreState;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
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
        Self {
            cache_dir: None,
            max_instances: 64,
            max_memory_mib: 512,
        }
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
        let engine = Engine::new(&config)
            .map_err(anyhow::Error::from)
            .context("creating the wasmtime engine")?;
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
        Ok(Self {
            engine,
            cache_dir: settings.cache_dir.clone(),
        })
    }

    /// Loads a component from a file: compiled, or taken from the cache, and
    /// linked against the contract (plus denied WASI if it imports any).
    pub fn load(&self, path: &Path) -> anyhow::Result<Plugin> {
        let bytes =
            std::fs::read(path).with_context(|| format!("reading plugin {}", path.display()))?;
        self.load_bytes(&bytes)
            .with_context(|| format!("loading plugin {}", path.display()))
    }

    /// [`Runtime::load`] from bytes in memory.
    pub fn load_bytes(&self, bytes: &[u8]) -> anyhow::Result<Plugin> {
        let version = hex::encode(Sha256::digest(bytes));
        let component = self.compile(bytes, &version)?;
        let mut linker = Linker::<StoreState>::new(&self.engine);
        PipelinePlugin::add_to_linker::<_, HasSelf<_>>(&mut linker, |state| state)?;
        let ty = component.component_type();
        let uses_wasi = ty
            .imports(&self.engine)
            .any(|(name, _)| name.starts_with("wasi:"));
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
        Ok(Plugin {
            engine: self.engine.clone(),
            pre,
            version,
            uses_wasi,
        })
    }

    fn compile(&self, bytes: &[u8], version: &str) -> anyhow::Result<Component> {
        let Some(dir) = &self.cache_dir else {
            return Ok(Component::new(&self.engine, bytes)?);
        };
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.engine
            .precompile_compatibility_hash()
            .hash(&mut hasher);
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
                Err(e) => {
                    tracing::warn!(path = %cached.display(), error = %e, "ignoring a bad cache entry")
                }
            }
        }
        let component = Component::new(&self.engine, bytes)?;
        let tmp = tempfile::NamedTempFile::new_in(dir)?;
        std::fs::write(tmp.path(), component.serialize()?)?;
        tmp.persist(&cached)
            .with_context(|| format!("writing {}", cached.display()))?;
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

/// What one row produced in [`Sandbox::probe`]: its events, and each event's
/// actions (or why deciding failed).
pub type Probe = (Vec<Event>, Vec<Outcome<Action>>);

/// A live instance and its store.
struct Instance {
    store: Store<StoreState>,
    plugin: PipelinePlugin,
}

/// A call into an instance over a range of the inputs.
type Call<'a, T> = dyn Fn(
        &PipelinePlugin,
        &mut Store<StoreState>,
        Range<usize>,
    ) -> wasmtime::Result<Vec<Result<Vec<T>, GuestError>>>
    + 'a;

impl Plugin {
    /// The SHA-256 of the component's bytes: which version produced an event.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Whether the component imports WASI interfaces (linked, all denied).
    pub fn uses_wasi(&self) -> bool {
        self.uses_wasi
    }

    /// A fresh instance in a fresh store; its start-up runs under the budget
    /// of one row.
    fn instantiate(&self, ctx: &CallContext) -> Result<Instance, PluginError> {
        let mut store = Store::new(&self.engine, StoreState::new(ctx));
        store.limiter(|state| &mut state.meter);
        arm(&mut store, ctx.limits.fuel_per_row, &ctx.limits)?;
        let plugin = self
            .pre
            .instantiate(&mut store)
            .map_err(|e| classify(e, &store, ctx.limits.fuel_per_row, &ctx.limits))?;
        Ok(Instance { store, plugin })
    }
}

/// Gives a store its budget for one call: fuel, the epoch deadline, a fresh
/// log budget and a clean record of denied growth.
fn arm(store: &mut Store<StoreState>, fuel: u64, limits: &Limits) -> Result<(), PluginError> {
    store
        .set_fuel(fuel)
        .map_err(|e| PluginError::Trap(e.to_string()))?;
    store.set_epoch_deadline(limits.timeout_ms.div_ceil(EPOCH_TICK.as_millis() as u64) + 1);
    store.epoch_deadline_trap();
    store.data_mut().begin_call(limits);
    Ok(())
}

/// One pipeline's view of its plugin: the component, the pipeline's limits
/// and settings, and a warm instance reused from call to call. The instance
/// is discarded after any failure the sandbox stopped, so a trap never leaves
/// a broken instance behind; the next call gets a fresh one.
pub struct Sandbox {
    plugin: Plugin,
    ctx: CallContext,
    warm: Mutex<Option<Instance>>,
}

impl Sandbox {
    /// A sandbox for one pipeline.
    pub fn new(plugin: Plugin, ctx: CallContext) -> Self {
        Self {
            plugin,
            ctx,
            warm: Mutex::new(None),
        }
    }

    /// The component.
    pub fn plugin(&self) -> &Plugin {
        &self.plugin
    }

    /// Maps rows to events: one outcome per row, in order.
    pub fn map_rows(&self, batch: &RowBatch) -> Vec<Outcome<Event>> {
        let rows = batch.rows.len();
        let call = |plugin: &PipelinePlugin, store: &mut Store<StoreState>, range: Range<usize>| {
            if range.len() == rows {
                plugin.call_map_rows(store, batch)
            } else {
                let sub = RowBatch {
                    columns: batch.columns.clone(),
                    rows: batch.rows[range].to_vec(),
                };
                plugin.call_map_rows(store, &sub)
            }
        };
        self.batched(rows, &call, check_event)
    }

    /// Decides the actions for events: one outcome per event, in order.
    pub fn decide(&self, events: &[Event]) -> Vec<Outcome<Action>> {
        let call = |plugin: &PipelinePlugin, store: &mut Store<StoreState>, range: Range<usize>| {
            plugin.call_decide(store, &events[range])
        };
        self.batched(events.len(), &call, check_action)
    }

    /// Runs `call` over all `n` inputs in the warm instance; if the sandbox
    /// stops that call, runs each input alone in a fresh instance so that only
    /// the inputs that cause the failure fail.
    fn batched<T>(
        &self,
        n: usize,
        call: &Call<'_, T>,
        check: fn(&T) -> Result<usize, String>,
    ) -> Vec<Outcome<T>> {
        if n == 0 {
            return Vec::new();
        }
        let mut slot = self
            .warm
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let warm = match slot.take() {
            Some(instance) => Ok(instance),
            None => self.plugin.instantiate(&self.ctx),
        };
        let error = match warm {
            Ok(mut instance) => match self.call(&mut instance, 0..n, call, check) {
                Ok((outcomes, _)) => {
                    *slot = Some(instance);
                    return outcomes;
                }
                Err(e) => e,
            },
            Err(e) => e,
        };
        if n == 1 || !error.is_sandbox_failure() {
            return (0..n).map(|_| Err(error.clone())).collect();
        }
        tracing::debug!(pipeline = %self.ctx.pipeline, error = %error, inputs = n, "batch failed; retrying input by input");
        (0..n)
            .map(|i| {
                let mut fresh = self.plugin.instantiate(&self.ctx)?;
                let (mut one, _) = self.call(&mut fresh, i..i + 1, call, check)?;
                one.pop().unwrap_or_else(|| Ok(Vec::new()))
            })
            .collect()
    }

    /// One call with a budget for `range.len()` inputs.
    fn call<T>(
        &self,
        instance: &mut Instance,
        range: Range<usize>,
        call: &Call<'_, T>,
        check: fn(&T) -> Result<usize, String>,
    ) -> Result<(Vec<Outcome<T>>, Usage), PluginError> {
        let n = range.len();
        let limits = &self.ctx.limits;
        let budget = limits.fuel_per_row.saturating_mul(n as u64);
        let store = &mut instance.store;
        arm(store, budget, limits)?;
        let answer =
            call(&instance.plugin, store, range).map_err(|e| classify(e, store, budget, limits))?;
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
        let limit = limits.output_bytes_per_row;
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

    /// Maps and decides one row alone, each call in a fresh instance, and
    /// reports what the calls used. For `freshet plugin test`.
    pub fn probe(
        &self,
        columns: &[String],
        row: &contract::Row,
    ) -> (Result<Probe, PluginError>, Usage) {
        let batch = RowBatch {
            columns: columns.to_vec(),
            rows: vec![row.clone()],
        };
        let fresh_call = |call: &Call<'_, Event>| {
            let mut instance = self.plugin.instantiate(&self.ctx)?;
            self.call(&mut instance, 0..1, call, check_event)
        };
        let (mut outcomes, mut usage) = match fresh_call(&|p, s, _| p.call_map_rows(s, &batch)) {
            Ok(ok) => ok,
            Err(e) => return (Err(e), Usage::default()),
        };
        let events = match outcomes.pop() {
            Some(Ok(events)) => events,
            Some(Err(e)) => return (Err(e), usage),
            None => Vec::new(),
        };
        let mut actions = Vec::with_capacity(events.len());
        for event in &events {
            let one = std::slice::from_ref(event);
            let decided = self.plugin.instantiate(&self.ctx).and_then(|mut i| {
                self.call(&mut i, 0..1, &|p, s, _| p.call_decide(s, one), check_action)
            });
            match decided {
                Ok((mut out, used)) => {
                    usage.fuel += used.fuel;
                    usage.peak_memory = usage.peak_memory.max(used.peak_memory);
                    actions.push(out.pop().unwrap_or_else(|| Ok(Vec::new())));
                }
                Err(e) => actions.push(Err(e)),
            }
        }
        (Ok((events, actions)), usage)
    }
}

/// Names a failed call for what stopped it.
fn classify(
    err: wasmtime::Error,
    store: &Store<StoreState>,
    budget: u64,
    limits: &Limits,
) -> PluginError {
    let meter = &store.data().meter;
    match err.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::OutOfFuel) => return PluginError::OutOfFuel { budget },
        Some(wasmtime::Trap::Interrupt) => return PluginError::Timeout(limits.timeout()),
        _ => {}
    }
    // A refused `memory.grow` returns -1 to the guest, whose allocator then
    // aborts with a trap of its own: name the cause, not the symptom.
    if let Some(requested) = meter.memory_denied {
        return PluginError::MemoryExceeded {
            requested,
            cap: meter.memory_cap(),
        };
    }
    if let Some(requested) = meter.table_denied {
        return PluginError::TableExceeded { requested };
    }
    PluginError::Trap(format!("{err:#}"))
}
