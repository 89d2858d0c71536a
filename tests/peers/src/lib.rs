//! The loopback peers freshet's integration tests and `freshet bench`
//! share, kept out of the product so the shipped binary carries neither a
//! server framework nor a path into the test tree:
//!
//! - [`receiver`]: AEP batch ingestion (and IMS), webhooks and CRM upserts,
//!   scriptable, in a test's runtime or as `freshet-peers receiver`;
//! - [`emulator`]: the Snowflake emulator (fakesnow behind the project's
//!   adapter) and the launcher of the tests' other Python peers.
//!
//! A peer run as a process prints `listening on PORT` once it accepts
//! connections and exits when its stdin closes, so it never outlives the
//! process that started it.

pub mod emulator;
pub mod receiver;
