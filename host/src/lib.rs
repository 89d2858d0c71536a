//! freshet: warehouse rows to AEP events and journey actions, through
//! sandboxed WebAssembly plugins.

pub mod config;
pub mod plugin;
pub mod source;
