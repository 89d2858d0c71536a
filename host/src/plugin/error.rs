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
    /// The row is larger than the pipeline lets into the sandbox; the plugin
    /// was not called for it.
    #[error("row of {size} bytes exceeds the input limit of {limit} bytes")]
    InputTooLarge {
        /// Bytes of the row's identity and cells.
        size: usize,
        /// The pipeline's limit.
        limit: u64,
    },
    /// The plugin wrote more log bytes in one call than its budget.
    #[error("plugin wrote more than its log budget of {limit} bytes in one call")]
    LogExceeded {
        /// The call's budget, in bytes.
        limit: u64,
    },
    /// No instance could be made right now (every pooled slot is in use).
    /// Not the row's fault: the page is retried later, nothing is
    /// dead-lettered.
    #[error("no plugin instance available: {0}")]
    Unavailable(String),
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
            Self::InputTooLarge { .. } => "input_too_large",
            Self::LogExceeded { .. } => "log_exceeded",
            Self::Unavailable(_) => "unavailable",
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
            Self::Reject(_)
                | Self::Guest(_)
                | Self::Contract(_)
                | Self::OutputTooLarge { .. }
                | Self::InputTooLarge { .. }
                | Self::Unavailable(_)
        )
    }

    /// Whether the instruction budget or the deadline stopped the call: the
    /// plugin spent all the CPU it was allowed.
    pub fn used_up_cpu(&self) -> bool {
        matches!(self, Self::OutOfFuel { .. } | Self::Timeout(_))
    }
}

/// How many rows (or events) failed in the sandbox, by [`PluginError::code`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FailureCounts([u64; FailureCounts::CODES.len()]);

impl FailureCounts {
    /// Every code a [`PluginError`] can have, in a fixed order.
    pub const CODES: [&'static str; 12] = [
        "reject",
        "guest_error",
        "out_of_fuel",
        "timeout",
        "memory_exceeded",
        "table_exceeded",
        "output_too_large",
        "input_too_large",
        "log_exceeded",
        "unavailable",
        "trap",
        "contract",
    ];

    /// Counts one failure.
    pub fn count(&mut self, error: &PluginError) {
        let code = error.code();
        if let Some(i) = Self::CODES.iter().position(|c| *c == code) {
            self.0[i] += 1;
        }
    }

    /// The count for one code.
    pub fn get(&self, code: &str) -> u64 {
        Self::CODES
            .iter()
            .position(|c| *c == code)
            .map_or(0, |i| self.0[i])
    }

    /// Adds another set of counts.
    pub fn add(&mut self, other: &FailureCounts) {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a += b;
        }
    }

    /// The total over every code.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }
}

impl serde::Serialize for FailureCounts {
    /// Only the codes that occurred, as `{code: count}`.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        let mut map = s.serialize_map(None)?;
        for (code, n) in Self::CODES.iter().zip(self.0) {
            if n > 0 {
                map.serialize_entry(code, &n)?;
            }
        }
        map.end()
    }
}
