//! Why a plugin call failed for one input, typed so the pipeline can branch
//! on it and dead letters can name it.

use std::time::Duration;

/// A failure of one row (or one event) inside the sandbox. Each fails that
/// input only: the pipeline dead-letters it and goes on.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PluginError {
    /// The plugin refused the input as bad data (the contract's `reject`).
    #[error("plugin rejected the input: {0}")]
    Reject(String),
    /// The plugin reported a failure of its own (the contract's `internal`).
    #[error("plugin failed: {0}")]
    Guest(String),
    /// The call used up its instruction budget.
    #[error("plugin ran out of fuel: budget of {budget} instructions used up")]
    OutOfFuel {
        /// The budget the call had.
        budget: u64,
    },
    /// The call ran past its wall-clock deadline.
    #[error("plugin call timed out after {0:?}")]
    Timeout(Duration),
    /// The plugin asked for more linear memory than its cap.
    #[error("plugin exceeded its memory cap: asked for {requested} bytes, cap is {cap} bytes")]
    MemoryExceeded {
        /// Bytes the plugin tried to grow its memory to.
        requested: usize,
        /// The pipeline's cap, in bytes.
        cap: usize,
    },
    /// The plugin asked for more table elements than its cap.
    #[error("plugin exceeded its table cap: asked for {requested} elements")]
    TableExceeded {
        /// Elements the plugin tried to grow a table to.
        requested: usize,
    },
    /// The plugin produced more output for one input than allowed.
    #[error("plugin output of {size} bytes exceeds the limit of {limit} bytes")]
    OutputTooLarge {
        /// Bytes produced.
        size: usize,
        /// The pipeline's limit.
        limit: u64,
    },
    /// The plugin trapped (panic, `unreachable`, out-of-bounds access, ...).
    #[error("plugin trapped: {0}")]
    Trap(String),
    /// The plugin answered, but not as the contract says (wrong number of
    /// results, an event body that is not a JSON object, ...).
    #[error("plugin broke the contract: {0}")]
    Contract(String),
}

impl PluginError {
    /// A short stable code for dead letters and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Reject(_) => "reject",
            Self::Guest(_) => "guest_error",
            Self::OutOfFuel { .. } => "out_of_fuel",
            Self::Timeout(_) => "timeout",
            Self::MemoryExceeded { .. } => "memory_exceeded",
            Self::TableExceeded { .. } => "table_exceeded",
            Self::OutputTooLarge { .. } => "output_too_large",
            Self::Trap(_) => "trap",
            Self::Contract(_) => "contract",
        }
    }

    /// Whether the sandbox stopped the call (as opposed to the guest
    /// answering with an error). After such a failure the instance is
    /// discarded and a batch is retried row by row to find the culprit.
    pub fn is_sandbox_failure(&self) -> bool {
        !matches!(
            self,
            Self::Reject(_) | Self::Guest(_) | Self::Contract(_) | Self::OutputTooLarge { .. }
        )
    }
}
