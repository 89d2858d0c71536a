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

pub use envelope::{EnvelopeBuilder, SchemaRef};

/// One serialized envelope.
#[derive(Debug, Clone)]
pub struct Message {
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

/// Why a sink gave up on a whole batch: shutdown, refused credentials or a
/// local fault. Nothing is committed, so the page is read again later.
#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    /// The pipeline is shutting down mid-retry.
    #[error("delivery cancelled by shutdown")]
    Cancelled,
    /// The destination refused the credentials, even a freshly fetched
    /// token: an operator must fix them (the pipeline keeps retrying the
    /// page meanwhile, and dead-letters nothing).
    #[error("{url} refused the credentials ({status}) twice, the second time with a new token: check the pipeline's deliver.ims or deliver.token_env: {reason}")]
    Unauthorized {
        /// The endpoint.
        url: String,
        /// 401 or 403.
        status: u16,
        /// What the destination said.
        reason: String,
    },
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
