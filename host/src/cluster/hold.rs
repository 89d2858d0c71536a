//! One lease as the pipeline running under it sees it: the fence its
//! commits carry, the deadline (on this host's monotonic clock) after which
//! it must not send, and the token that stops it when the lease is lost or
//! given back.

use crate::state::Fence;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// A lease this host holds on one pipeline.
#[derive(Debug)]
pub struct Hold {
    pipeline: Arc<str>,
    fence: Fence,
    /// Sending stops at this instant unless a renewal moves it.
    deadline: Mutex<Instant>,
    /// Cancelled to stop the pipeline's run: the lease was lost, is being
    /// given back, or the host shuts down.
    stop: CancellationToken,
    lost: AtomicBool,
}

/// The lease ran out on this host's clock before a renewal came (the
/// database was unreachable, or the host was paused): another host may hold
/// it already, so nothing more is sent.
#[derive(Debug, thiserror::Error)]
#[error("pipeline {pipeline}: the lease of epoch {epoch} ran out {late:?} ago on this host's clock without a renewal; nothing more is sent under it")]
pub struct LeaseExpired {
    /// The pipeline.
    pub pipeline: String,
    /// The lease's epoch.
    pub epoch: i64,
    /// How long ago it ran out.
    pub late: Duration,
}

impl Hold {
    /// A lease claimed at `epoch`, valid on this host's clock until
    /// `deadline`; `stop` ends the run under it.
    pub fn new(pipeline: &str, fence: Fence, deadline: Instant, stop: CancellationToken) -> Self {
        Self {
            pipeline: pipeline.into(),
            fence,
            deadline: Mutex::new(deadline),
            stop,
            lost: AtomicBool::new(false),
        }
    }

    /// What every commit under the lease carries.
    pub fn fence(&self) -> Fence {
        self.fence.clone()
    }

    /// The lease's epoch.
    pub fn epoch(&self) -> i64 {
        self.fence.epoch
    }

    /// Stops the run under the lease.
    pub fn stop(&self) -> &CancellationToken {
        &self.stop
    }

    /// Before anything is sent under the lease: fails once its deadline
    /// passed.
    pub fn check(&self) -> Result<(), LeaseExpired> {
        let deadline = *self.deadline.lock().expect("lease deadline lock");
        let now = Instant::now();
        if now < deadline {
            return Ok(());
        }
        Err(LeaseExpired {
            pipeline: self.pipeline.to_string(),
            epoch: self.fence.epoch,
            late: now - deadline,
        })
    }

    /// A renewal reached the database: valid until `deadline`.
    pub(super) fn extend(&self, deadline: Instant) {
        let mut d = self.deadline.lock().expect("lease deadline lock");
        *d = (*d).max(deadline);
    }

    /// Another host holds it now: stop, and give nothing back.
    pub(super) fn lose(&self) {
        self.lost.store(true, Ordering::SeqCst);
        self.stop.cancel();
    }

    /// Whether another host took it.
    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }
}

/// Whether `e` (a page's or a run's error) means the pipeline's lease is
/// gone: the run must end, not retry.
pub fn lease_lost(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause.downcast_ref::<LeaseExpired>().is_some()
            || matches!(
                cause.downcast_ref::<crate::state::StateError>(),
                Some(crate::state::StateError::Fenced { .. })
            )
    })
}
