//! What a plugin can reach from inside its store: the contract's imports
//! (logging, its own settings) and a WASI context with every capability
//! denied — no files, environment, arguments, sockets; a fixed clock and a
//! fixed random stream so outputs never depend on when or where they ran.

use super::bindings::freshet::plugin::{host, types};
use super::limits::Meter;
use super::CallContext;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use wasmtime_wasi::{
    HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView,
};

/// The data of one plugin store.
pub(crate) struct StoreState {
    pub meter: Meter,
    pipeline: Arc<str>,
    settings: Arc<BTreeMap<String, String>>,
    log_budget: u64,
    log_dropped: u64,
    wasi: WasiCtx,
    table: wasmtime::component::ResourceTable,
}

impl StoreState {
    pub fn new(ctx: &CallContext) -> Self {
        Self {
            meter: Meter::new(&ctx.limits),
            pipeline: ctx.pipeline.clone(),
            settings: ctx.settings.clone(),
            log_budget: ctx.limits.log_bytes_per_call,
            log_dropped: 0,
            wasi: denied_wasi(),
            table: wasmtime::component::ResourceTable::new(),
        }
    }

    /// Starts a call: a fresh log budget and a clean record of denials.
    pub fn begin_call(&mut self, limits: &super::Limits) {
        self.log_budget = limits.log_bytes_per_call;
        self.log_dropped = 0;
        self.meter.memory_denied = None;
        self.meter.table_denied = None;
    }

    /// Reports what the call's log budget dropped.
    pub fn finish_call(&self) {
        if self.log_dropped > 0 {
            tracing::warn!(pipeline = %self.pipeline, dropped = self.log_dropped, "plugin log lines over the budget were dropped");
        }
    }
}

/// A WASI context that grants nothing.
fn denied_wasi() -> WasiCtx {
    let mut builder = WasiCtxBuilder::new();
    builder
        .wall_clock(FixedClock)
        .monotonic_clock(FixedClock)
        .secure_random(wasmtime_wasi::Deterministic::new(vec![0x5e, 0xed]))
        .insecure_random(wasmtime_wasi::Deterministic::new(vec![0x5e, 0xed]))
        .insecure_random_seed(0)
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false);
    builder.build()
}

/// A clock stopped at the epoch: plugins that read the time get a constant,
/// so a replayed row maps exactly as it did the first time.
struct FixedClock;

impl HostWallClock for FixedClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl HostMonotonicClock for FixedClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

impl WasiView for StoreState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl types::Host for StoreState {}

impl host::Host for StoreState {
    fn log(&mut self, level: host::Level, message: String) {
        let size = message.len() as u64;
        if size > self.log_budget {
            self.log_budget = 0;
            self.log_dropped += 1;
            return;
        }
        self.log_budget -= size;
        let pipeline = &*self.pipeline;
        match level {
            host::Level::Trace => {
                tracing::trace!(target: "freshet::plugin_log", pipeline, "{message}")
            }
            host::Level::Debug => {
                tracing::debug!(target: "freshet::plugin_log", pipeline, "{message}")
            }
            host::Level::Info => {
                tracing::info!(target: "freshet::plugin_log", pipeline, "{message}")
            }
            host::Level::Warn => {
                tracing::warn!(target: "freshet::plugin_log", pipeline, "{message}")
            }
            host::Level::Error => {
                tracing::error!(target: "freshet::plugin_log", pipeline, "{message}")
            }
        }
    }

    fn get_setting(&mut self, name: String) -> Option<String> {
        self.settings.get(&name).cloned()
    }
}
