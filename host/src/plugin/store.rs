//! What a plugin can reach from inside its store: the contract's imports
//! (logging, its own settings) and a WASI context with every capability
//! denied — no files, environment, arguments, sockets; a fixed clock and a
//! fixed random stream so outputs never depend on when or where they ran,
//! unless the operator grants the real ones to the pipeline.

use super::bindings::freshet::plugin::{host, types};
use super::bindings_v2::freshet::plugin::{decisions, host as host_v2};
use super::limits::{Grants, Meter};
use super::logs::{Level, LogRoute};
use super::timing::Clock;
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
    logs: Arc<LogRoute>,
    settings: Arc<BTreeMap<String, String>>,
    log_limit: u64,
    log_budget: u64,
    wasi: WasiCtx,
    table: wasmtime::component::ResourceTable,
    /// Set for a timed instance (see [`StoreState::time_calls`]).
    pub clock: Option<Clock>,
}

impl StoreState {
    pub fn new(ctx: &CallContext) -> Self {
        Self {
            meter: Meter::new(&ctx.limits),
            logs: ctx.logs.clone(),
            settings: ctx.settings.clone(),
            log_limit: ctx.limits.log_bytes_per_row,
            log_budget: ctx.limits.log_bytes_per_row,
            wasi: wasi_context(ctx.grants),
            table: wasmtime::component::ResourceTable::new(),
            clock: None,
        }
    }

    /// Times the store's calls from now on: the guest's side and the host's
    /// of every crossing, through wasmtime's call hook.
    pub fn time_calls(store: &mut wasmtime::Store<StoreState>) {
        store.data_mut().clock = Some(Clock::default());
        store.call_hook(|mut ctx, hook| {
            if let Some(clock) = &mut ctx.data_mut().clock {
                clock.transition(hook);
            }
            Ok(())
        });
    }

    /// Starts a call over `inputs` inputs: a fresh log budget and a clean
    /// record of denials.
    pub fn begin_call(&mut self, limits: &super::Limits, inputs: u64) {
        self.log_limit = limits.log_bytes_per_row.saturating_mul(inputs.max(1));
        self.log_budget = self.log_limit;
        self.meter.memory_denied = None;
        self.meter.table_denied = None;
        self.meter.log_exceeded = None;
    }

    /// Reports lines the rate limit dropped, when a report is due.
    pub fn finish_call(&self) {
        self.logs.report();
    }
}

/// A WASI context that grants nothing but what `grants` names: no files,
/// environment, arguments or sockets, ever; clocks and randomness only when
/// granted.
fn wasi_context(grants: Grants) -> WasiCtx {
    let mut builder = WasiCtxBuilder::new();
    if !grants.clock {
        builder.wall_clock(FixedClock).monotonic_clock(FixedClock);
    }
    if !grants.random {
        builder
            .secure_random(wasmtime_wasi::Deterministic::new(vec![0x5e, 0xed]))
            .insecure_random(wasmtime_wasi::Deterministic::new(vec![0x5e, 0xed]))
            .insecure_random_seed(0);
    }
    builder
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
    /// One second past the monotonic clock's arbitrary origin, not zero:
    /// Go's runtime refuses to start on a monotonic clock that reads zero
    /// ("nanotime returning zero").
    fn now(&self) -> u64 {
        1_000_000_000
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
    /// Trappable: a call that writes past its log budget is stopped, and
    /// its rows fail with `log_exceeded`.
    fn log(&mut self, level: host::Level, message: String) -> wasmtime::Result<()> {
        let size = message.len() as u64;
        if size > self.log_budget {
            self.log_budget = 0;
            self.meter.log_exceeded = Some(self.log_limit);
            return Err(wasmtime::format_err!("log budget exceeded"));
        }
        self.log_budget -= size;
        let level = match level {
            host::Level::Trace => Level::Trace,
            host::Level::Debug => Level::Debug,
            host::Level::Info => Level::Info,
            host::Level::Warn => Level::Warn,
            host::Level::Error => Level::Error,
        };
        self.logs.emit(level, &message);
        Ok(())
    }

    fn get_setting(&mut self, name: String) -> Option<String> {
        self.settings.get(&name).cloned()
    }
}

impl decisions::Host for StoreState {}

/// Contract 0.2's `host` is 0.1's, under the new package version, and
/// `event-id`.
impl host_v2::Host for StoreState {
    fn log(&mut self, level: host_v2::Level, message: String) -> wasmtime::Result<()> {
        let level = match level {
            host_v2::Level::Trace => host::Level::Trace,
            host_v2::Level::Debug => host::Level::Debug,
            host_v2::Level::Info => host::Level::Info,
            host_v2::Level::Warn => host::Level::Warn,
            host_v2::Level::Error => host::Level::Error,
        };
        host::Host::log(self, level, message)
    }

    fn get_setting(&mut self, name: String) -> Option<String> {
        host::Host::get_setting(self, name)
    }

    fn event_id(&mut self, identity: String, index: u32) -> String {
        super::derived_id(&identity, index as usize)
    }
}
