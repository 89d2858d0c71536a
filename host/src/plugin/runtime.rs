//! The process's one wasmtime engine: built from `[engine]`, it loads
//! components — refusing what is too large or too slow to compile, caching
//! compiled code on disk so a restart does not recompile, and keeping one
//! copy per content hash however many pipelines run it — and owns the
//! threads plugin calls run on ([`Scheduler`]).
//!
//! wasmtime treats denial of service at compile time as outside its security
//! scope, so an uploaded component is never compiled on a caller's thread:
//! compilation runs on a thread of its own and the caller waits at most
//! `engine.compile_timeout_ms`; a compile that overruns is refused and its
//! result thrown away (not cached), whenever it finishes.

use super::bindings::{PipelinePlugin, PipelinePluginPre};
use super::bindings_json::{PipelinePluginJson, PipelinePluginJsonPre};
use super::bindings_v2::{
    PipelinePlugin as PipelinePluginV2, PipelinePluginPre as PipelinePluginPreV2,
};
use super::contract::Version;
use super::scheduler::Scheduler;
use super::store::StoreState;
use super::EngineSettings;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// How often the epoch ticks: the resolution of call deadlines.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Why a component could not be loaded. The running version (if any) is
/// untouched by any of these.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The component is larger than the engine accepts.
    #[error("component of {size} bytes exceeds engine.max_component_bytes ({limit})")]
    TooLarge {
        /// Its size in bytes.
        size: u64,
        /// `engine.max_component_bytes`.
        limit: u64,
    },
    /// Compiling took longer than the engine allows.
    #[error("compiling took longer than engine.compile_timeout_ms ({0:?}); refused")]
    CompileTimeout(Duration),
    /// The bytes are not a valid component for this engine.
    #[error("not a valid WebAssembly component: {0}")]
    Invalid(String),
    /// A valid component that does not fit the contract (missing exports,
    /// imports the host does not offer).
    #[error("the component does not fit the freshet:plugin contract: {0}")]
    Contract(String),
}

/// How a loaded plugin's machine code was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Compiled now, by Cranelift.
    Compiled,
    /// Read from the on-disk cache of compiled components.
    DiskCache,
}

/// The process's wasmtime engine, its loaded components and plugin threads.
/// Cheap to clone.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Engine,
    cache_dir: Option<PathBuf>,
    max_component_bytes: u64,
    compile_timeout: Duration,
    /// One copy of each component in memory, by content hash, for as long
    /// as some pipeline uses it.
    loaded: Mutex<HashMap<String, Weak<Loaded>>>,
    /// The content hash last read from each file, with the file's size and
    /// modification time then: many pipelines naming one file (an 18 MB
    /// Python component, say) read and hash it once, not once each.
    files: Mutex<HashMap<PathBuf, (FileStamp, String)>>,
    scheduler: Arc<Scheduler>,
    /// Where loads are counted, when the host exports metrics.
    metrics: std::sync::OnceLock<crate::metrics::Metrics>,
}

/// What tells a changed file apart: size and modification time.
type FileStamp = (u64, std::time::SystemTime);

impl Runtime {
    /// Builds the engine (component model, fuel, epoch interruption, the
    /// pooling allocator sized from `settings`), starts the thread that
    /// advances the epoch and the plugin threads.
    pub fn new(settings: &EngineSettings) -> anyhow::Result<Self> {
        use anyhow::Context as _;
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
        let scheduler = Scheduler::new(settings.plugin_threads(), settings.heavy_fuel_share)
            .context("starting the plugin threads")?;
        Ok(Self {
            inner: Arc::new(Inner {
                engine,
                cache_dir: settings.cache_dir.clone(),
                max_component_bytes: settings.max_component_bytes,
                compile_timeout: Duration::from_millis(settings.compile_timeout_ms),
                loaded: Mutex::new(HashMap::new()),
                files: Mutex::new(HashMap::new()),
                scheduler: Arc::new(scheduler),
                metrics: std::sync::OnceLock::new(),
            }),
        })
    }

    /// Counts every later load in `metrics`, by where its machine code came
    /// from (memory, the disk cache, the compiler).
    pub fn count_loads_into(&self, metrics: crate::metrics::Metrics) {
        let _ = self.inner.metrics.set(metrics);
    }

    fn count_load(&self, origin: &'static str) {
        if let Some(m) = self.inner.metrics.get() {
            m.plugin_loaded(origin);
        }
    }

    /// The threads plugin calls run on.
    pub fn scheduler(&self) -> &Arc<Scheduler> {
        &self.inner.scheduler
    }

    /// Loads a component from a file. Blocks for as long as compiling takes
    /// (at most `engine.compile_timeout_ms`): call it off the async threads.
    pub fn load(&self, path: &Path) -> Result<Plugin, LoadError> {
        let read = |source| LoadError::Read {
            path: path.to_owned(),
            source,
        };
        let limit = self.inner.max_component_bytes;
        let file = std::fs::File::open(path).map_err(read)?;
        let meta = file.metadata().map_err(read)?;
        let size = meta.len();
        if size > limit {
            return Err(LoadError::TooLarge { size, limit });
        }
        let stamp = meta.modified().ok().map(|modified| (size, modified));
        if let Some(plugin) = stamp.and_then(|stamp| self.unchanged(path, stamp)) {
            self.count_load("memory");
            return Ok(plugin);
        }
        let mut bytes = Vec::with_capacity(size as usize);
        // The file may grow between the check and the read.
        file.take(limit + 1).read_to_end(&mut bytes).map_err(read)?;
        let plugin = self.load_bytes(&bytes)?;
        if let Some(stamp) = stamp {
            lock(&self.inner.files).insert(path.to_owned(), (stamp, plugin.version().to_owned()));
        }
        Ok(plugin)
    }

    /// The loaded plugin of `path`, if the file is as it was when last read
    /// and some pipeline still holds its component.
    fn unchanged(&self, path: &Path, stamp: FileStamp) -> Option<Plugin> {
        let files = lock(&self.inner.files);
        let (seen, version) = files.get(path)?;
        if *seen != stamp {
            return None;
        }
        lock(&self.inner.loaded)
            .get(version)
            .and_then(Weak::upgrade)
            .map(Plugin)
    }

    /// [`Runtime::load`] from bytes in memory.
    pub fn load_bytes(&self, bytes: &[u8]) -> Result<Plugin, LoadError> {
        let limit = self.inner.max_component_bytes;
        if bytes.len() as u64 > limit {
            return Err(LoadError::TooLarge {
                size: bytes.len() as u64,
                limit,
            });
        }
        let version = hex::encode(Sha256::digest(bytes));
        let mut loaded = lock(&self.inner.loaded);
        if let Some(plugin) = loaded.get(&version).and_then(Weak::upgrade) {
            self.count_load("memory");
            return Ok(Plugin(plugin));
        }
        loaded.retain(|_, weak| weak.strong_count() > 0);
        drop(loaded);
        let (component, origin) = self.compile(bytes, &version)?;
        self.count_load(match origin {
            Origin::Compiled => "compiled",
            Origin::DiskCache => "disk_cache",
        });
        let plugin = Arc::new(self.link(component, version.clone(), origin)?);
        lock(&self.inner.loaded).insert(version, Arc::downgrade(&plugin));
        Ok(Plugin(plugin))
    }

    fn link(
        &self,
        component: Component,
        content: String,
        origin: Origin,
    ) -> Result<Loaded, LoadError> {
        let engine = &self.inner.engine;
        let contract = |e: wasmtime::Error| LoadError::Contract(format!("{e:#}"));
        let mut linker = Linker::<StoreState>::new(engine);
        let kind = component.component_type();
        // A 0.2 component exports `process` (or, speaking JSON,
        // `process-json`); anything else is held to 0.1 (and a component of
        // neither fails to link, naming what it lacks).
        let exports = |export: &str| kind.exports(engine).any(|(name, _)| name == export);
        let version = if exports("process") {
            PipelinePluginV2::add_to_linker::<_, HasSelf<_>>(&mut linker, |state| state)
                .map_err(contract)?;
            Version::V0_2
        } else if exports("process-json") {
            PipelinePluginJson::add_to_linker::<_, HasSelf<_>>(&mut linker, |state| state)
                .map_err(contract)?;
            Version::V0_2Json
        } else {
            PipelinePlugin::add_to_linker::<_, HasSelf<_>>(&mut linker, |state| state)
                .map_err(contract)?;
            Version::V0_1
        };
        let uses_wasi = kind
            .imports(engine)
            .any(|(name, _)| name.starts_with("wasi:"));
        if uses_wasi {
            // Toolchains (Rust std, Python, JavaScript) import WASI whether or
            // not the code uses it; it links, with every capability denied.
            wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(contract)?;
        }
        let pre = linker.instantiate_pre(&component).map_err(contract)?;
        let pre = match version {
            Version::V0_1 => Pre::V0_1(PipelinePluginPre::new(pre).map_err(contract)?),
            Version::V0_2 => Pre::V0_2(PipelinePluginPreV2::new(pre).map_err(contract)?),
            Version::V0_2Json => Pre::Json(PipelinePluginJsonPre::new(pre).map_err(contract)?),
        };
        Ok(Loaded {
            engine: engine.clone(),
            pre,
            version: content,
            uses_wasi,
            origin,
        })
    }

    /// The compiled component: from the disk cache, or compiled on a thread
    /// of its own within the time limit (and then cached).
    fn compile(&self, bytes: &[u8], version: &str) -> Result<(Component, Origin), LoadError> {
        let engine = &self.inner.engine;
        let cached = self.inner.cache_dir.as_ref().map(|dir| {
            use std::hash::{Hash, Hasher};
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            engine.precompile_compatibility_hash().hash(&mut hasher);
            dir.join(format!("{version}-{:016x}.cwasm", hasher.finish()))
        });
        if let Some(cached) = cached.as_ref().filter(|p| p.exists()) {
            // SAFETY: the cache directory is the host's own (the operator's
            // config names it); only this function writes it, from
            // `Component::serialize` of the same engine configuration.
            #[allow(unsafe_code)]
            match unsafe { Component::deserialize_file(engine, cached) } {
                Ok(component) => return Ok((component, Origin::DiskCache)),
                Err(e) => {
                    tracing::warn!(path = %cached.display(), error = %e, "ignoring a bad cache entry")
                }
            }
        }
        let abandoned = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let job = {
            let engine = engine.clone();
            let bytes = bytes.to_vec();
            let abandoned = abandoned.clone();
            move || {
                let started = Instant::now();
                let compiled = Component::new(&engine, &bytes);
                if let (Ok(component), Some(path)) = (&compiled, &cached) {
                    if !abandoned.load(Ordering::Acquire) {
                        if let Err(e) = write_cache(component, path) {
                            tracing::warn!(path = %path.display(), error = %format!("{e:#}"), "could not cache the compiled component");
                        }
                    }
                }
                tracing::debug!(elapsed = ?started.elapsed(), "compiled a component");
                let _ = tx.send(compiled.map_err(|e| format!("{e:#}")));
            }
        };
        std::thread::Builder::new()
            .name("freshet-compile".into())
            .spawn(job)
            .map_err(|e| LoadError::Invalid(format!("cannot start a compile thread: {e}")))?;
        match rx.recv_timeout(self.inner.compile_timeout) {
            Ok(Ok(component)) => Ok((component, Origin::Compiled)),
            Ok(Err(e)) => Err(LoadError::Invalid(e)),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Err(LoadError::Invalid(
                "the compiler stopped without an answer (it panicked)".into(),
            )),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                abandoned.store(true, Ordering::Release);
                Err(LoadError::CompileTimeout(self.inner.compile_timeout))
            }
        }
    }
}

/// A lock that a panic elsewhere does not poison for good: the maps it
/// guards are consistent after every single operation.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn write_cache(component: &Component, path: &Path) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = tempfile::NamedTempFile::new_in(dir)?;
    std::fs::write(tmp.path(), component.serialize()?)?;
    tmp.persist(path)?;
    Ok(())
}

/// A loaded, linked component, ready to instantiate. Cheap to clone; every
/// pipeline running the same bytes shares one.
#[derive(Clone)]
pub struct Plugin(Arc<Loaded>);

/// A component ready to instantiate, linked against the contract it was
/// built for.
pub(crate) enum Pre {
    V0_1(PipelinePluginPre<StoreState>),
    V0_2(PipelinePluginPreV2<StoreState>),
    Json(PipelinePluginJsonPre<StoreState>),
}

/// An instance's exports, under its contract.
pub(crate) enum Bound {
    V0_1(PipelinePlugin),
    V0_2(PipelinePluginV2),
    Json(PipelinePluginJson),
}

impl Pre {
    pub fn version(&self) -> Version {
        match self {
            Pre::V0_1(_) => Version::V0_1,
            Pre::V0_2(_) => Version::V0_2,
            Pre::Json(_) => Version::V0_2Json,
        }
    }

    pub fn instantiate(&self, store: &mut wasmtime::Store<StoreState>) -> wasmtime::Result<Bound> {
        Ok(match self {
            Pre::V0_1(pre) => Bound::V0_1(pre.instantiate(store)?),
            Pre::V0_2(pre) => Bound::V0_2(pre.instantiate(store)?),
            Pre::Json(pre) => Bound::Json(pre.instantiate(store)?),
        })
    }
}

pub(crate) struct Loaded {
    pub engine: Engine,
    pub pre: Pre,
    version: String,
    uses_wasi: bool,
    origin: Origin,
}

impl Plugin {
    /// The SHA-256 of the component's bytes, in hex: which version of a
    /// plugin produced an event.
    pub fn version(&self) -> &str {
        &self.0.version
    }

    /// The contract the component was built against.
    pub fn contract(&self) -> Version {
        self.0.pre.version()
    }

    /// Whether the component imports WASI interfaces (linked, all denied).
    pub fn uses_wasi(&self) -> bool {
        self.0.uses_wasi
    }

    /// Whether its code was compiled now or read from the disk cache.
    pub fn origin(&self) -> Origin {
        self.0.origin
    }

    pub(crate) fn loaded(&self) -> &Loaded {
        &self.0
    }

    /// Whether two handles are the same loaded component.
    pub fn same(&self, other: &Plugin) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}
