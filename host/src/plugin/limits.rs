//! Per-pipeline sandbox limits, and the store-side bookkeeping that enforces
//! the memory and table caps and remembers what a call used.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// What one pipeline's plugin may use. Every field has a default, so
/// `[pipelines.NAME.limits]` only names what it changes.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Instructions (wasmtime fuel units, about one per wasm instruction) a
    /// plugin may spend per row (or event), whatever its size; a batch call
    /// gets the sum of its inputs' budgets. The default matches Shopify
    /// Functions' 11M budget, generous for mapping code.
    pub fuel_per_row: u64,
    /// Instructions a plugin may spend per byte of an input, on top of
    /// `fuel_per_row`, so a legitimately large row (a 100 KB text column)
    /// gets a budget in proportion. Measured on rows up to 1 MB (BENCHMARKS.md),
    /// the Rust, C, Python and Go example plugins spend 33–260 per byte and
    /// call on plain text and up to ~500 on text that is mostly escapes; the
    /// default leaves twice that. The JavaScript plugin's engine spends
    /// ~2,600–5,200 a byte: raise this (and `timeout_ms`) for such a pipeline.
    pub fuel_per_input_byte: u64,
    /// Wall-clock deadline for one call into the plugin, in milliseconds,
    /// enforced by epoch interruption (10 ms resolution). Catches what fuel
    /// cannot: time spent in host calls, or a plugin run with fuel off.
    pub timeout_ms: u64,
    /// Linear memory cap per instance, in MiB.
    pub memory_mib: u64,
    /// Table elements cap per table (function references).
    pub table_elements: u64,
    /// Bytes of log messages a plugin may write per row (a batch call gets
    /// this times its rows). A call that writes more is stopped: the rows
    /// fail with `log_exceeded`, so a log flood cannot fill the host's disk.
    pub log_bytes_per_row: u64,
    /// Log lines per second the pipeline's plugin may put into the host's
    /// log, across calls; lines over the rate are dropped and counted (the
    /// rows are not failed: a chatty plugin is not a broken one).
    pub log_lines_per_second: u32,
    /// Bytes of input (the row's identity and cells) per row; a larger row
    /// is not given to the plugin and fails with `input_too_large`.
    pub input_bytes_per_row: u64,
    /// Bytes of output (event bodies and action payloads) per input row.
    pub output_bytes_per_row: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            fuel_per_row: 11_000_000,
            fuel_per_input_byte: 1_000,
            timeout_ms: 1_000,
            memory_mib: 64,
            table_elements: 20_000,
            log_bytes_per_row: 16 * 1024,
            log_lines_per_second: 100,
            input_bytes_per_row: 1024 * 1024,
            output_bytes_per_row: 1024 * 1024,
        }
    }
}

/// Ambient capabilities the operator grants a pipeline's plugin
/// (`[pipelines.NAME.grants]`). Everything is denied unless named here; files,
/// environment and sockets cannot be granted at all.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Grants {
    /// The real wall and monotonic clocks (otherwise both stand at the epoch,
    /// so a replayed row maps exactly as the first time).
    pub clock: bool,
    /// Real randomness (otherwise a fixed stream).
    pub random: bool,
}

impl Limits {
    /// The memory cap in bytes.
    pub fn memory_bytes(&self) -> u64 {
        self.memory_mib * 1024 * 1024
    }

    /// The fuel an input of `bytes` bytes may spend:
    /// `fuel_per_row + fuel_per_input_byte × bytes`.
    pub fn budget(&self, bytes: usize) -> u64 {
        let per_byte = self.fuel_per_input_byte.saturating_mul(bytes as u64);
        self.fuel_per_row.saturating_add(per_byte)
    }

    /// The wall-clock deadline per call.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

/// Enforces [`Limits`] on one store and records the peak use and the first
/// denied request, so a trap that follows a denied `memory.grow` is reported
/// as what it is rather than as the guest's `unreachable`.
#[derive(Debug)]
pub(crate) struct Meter {
    memory_cap: usize,
    table_cap: usize,
    /// Largest linear memory granted so far, in bytes.
    pub peak_memory: usize,
    /// The first memory growth refused: the size asked for, in bytes.
    pub memory_denied: Option<usize>,
    /// The first table growth refused: the elements asked for.
    pub table_denied: Option<usize>,
    /// The call's log budget, in bytes, when the plugin wrote past it.
    pub log_exceeded: Option<u64>,
}

impl Meter {
    pub fn new(limits: &Limits) -> Self {
        Self {
            memory_cap: usize::try_from(limits.memory_bytes()).unwrap_or(usize::MAX),
            table_cap: usize::try_from(limits.table_elements).unwrap_or(usize::MAX),
            peak_memory: 0,
            memory_denied: None,
            table_denied: None,
            log_exceeded: None,
        }
    }

    pub fn memory_cap(&self) -> usize {
        self.memory_cap
    }
}

impl wasmtime::ResourceLimiter for Meter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_cap {
            self.memory_denied.get_or_insert(desired);
            return Ok(false);
        }
        self.peak_memory = self.peak_memory.max(desired);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.table_cap {
            self.table_denied.get_or_insert(desired);
            return Ok(false);
        }
        Ok(true)
    }
}
