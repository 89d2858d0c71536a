//! freshet: warehouse rows to AEP events and journey actions, through
//! sandboxed WebAssembly plugins.
//!
//! # Layout
//!
//! - [`config`]: the TOML file — parse, pure validation with key paths.
//! - [`source`]: the `Source` trait, the `(timestamp, key)` cursor, SQLite.
//! - [`plugin`]: the wasmtime engine, the contract's bindings, limits.
//! - [`deliver`]: the AEP envelope, the `Sink` trait, AEP batch and file sinks.
//! - [`actions`]: targets and executors (webhook, e-mail, CRM, record).
//! - [`retry`]: the one HTTP retry classifier and backoff, for every peer.
//! - [`secrets`]: typed references to secrets, read only through the
//!   owning tenant's [`secrets::Secrets`].
//! - [`state`]: offsets, the action ledger, dead letters (`StateStore`),
//!   in SQLite (one host) or PostgreSQL (hosts sharing pipelines).
//! - [`cluster`]: each host's lease keeper when hosts share pipelines.
//! - [`pipeline`]: one page at a time from source to commit; [`run`].
//! - [`metrics`] and [`ops`]: Prometheus metrics, health, the admin API and
//!   the status page of a running host.
//! - [`cli`] and [`bench`]: the `freshet` command's subcommands.

pub mod actions;
pub mod bench;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod deliver;
pub mod metrics;
pub mod ops;
pub mod pipeline;
pub mod plugin;
pub mod postgres;
pub mod profile;
pub mod retry;
pub mod secrets;
pub mod source;
pub mod state;

pub use pipeline::{run, run_file, RunOptions, Stats};
