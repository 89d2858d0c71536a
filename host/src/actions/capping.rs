//! Journey-action capping, for every target kind: at most `max_calls` per
//! `period_ms` (a fixed window; calls over it are refused with outcome
//! `capped` and dead-lettered, as AJO does), and at most `max_connections`
//! in flight (more wait their turn).

use crate::config::CappingConfig;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, SemaphorePermit};

/// One target's cap.
pub(super) struct Capping {
    max_calls: u64,
    period: Duration,
    window: Mutex<(Instant, u64)>,
    connections: Semaphore,
}

impl Capping {
    pub(super) fn new(config: &CappingConfig) -> Self {
        Self {
            max_calls: config.max_calls,
            period: Duration::from_millis(config.period_ms),
            window: Mutex::new((Instant::now(), 0)),
            connections: Semaphore::new(config.max_connections),
        }
    }

    /// Counts a call against the current window and waits for a connection;
    /// `Err` with the reason when the call is over the cap.
    pub(super) async fn admit(&self, target: &str) -> Result<SemaphorePermit<'_>, String> {
        {
            let mut window = self
                .window
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let now = Instant::now();
            if now.duration_since(window.0) >= self.period {
                *window = (now, 0);
            }
            window.1 += 1;
            if window.1 > self.max_calls {
                return Err(format!(
                    "target `{target}` is capped at {} calls per {:?}",
                    self.max_calls, self.period
                ));
            }
        }
        self.connections
            .acquire()
            .await
            .map_err(|_| "the target is closed".to_owned())
    }
}
