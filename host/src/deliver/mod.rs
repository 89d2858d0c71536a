//! Where events go: the AEP streaming envelope and the [`Sink`] trait, with
//! the AEP batch endpoint ([`aep`]) and an NDJSON file ([`file`]) behind it.
//!
//! A sink answers one [`Delivery`] per message, in order. Retriable failures
//! are retried inside the sink until they pass or the pipeline shuts down, so
//! what comes back is final: delivered, or rejected for good with a reason
//! (which the pipeline dead-letters).

pub mod aep;
pub mod auth;
mod envelope;
pub mod file;
mod retry;

pub use envelope::{EnvelopeBuilder, SchemaRef};
pub use retry::{retry_after, Backoff};

/// One serialized envelope and the row it came from.
#[derive(Debug, Clone)]
pub struct Message {
    /// The source row's identity, for dead letters.
    pub identity: String,
    /// The envelope JSON.
    pub json: String,
}

/// The final fate of one message.
#[derive(Debug, Clone, PartialEq)]
pub enum Delivery {
    /// Accepted by the destination.
    Delivered,
    /// Refused for good.
    Rejected {
        /// A short code: `http_400`, `too_large`, ...
        code: String,
        /// The destination's reason.
        reason: String,
    },
}

/// Why a sink gave up on a whole batch: only shutdown or a local fault.
/// Nothing is committed, so the page is read again later.
#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    /// The pipeline is shutting down mid-retry.
    #[error("delivery cancelled by shutdown")]
    Cancelled,
    /// Writing locally failed (the file sink).
    #[error("delivery failed: {0}")]
    Io(String),
}

/// A destination for events.
#[async_trait::async_trait]
pub trait Sink: Send + Sync {
    /// Delivers the messages; one answer per message, in order.
    async fn deliver(&self, messages: &[Message]) -> Result<Vec<Delivery>, DeliverError>;
}
