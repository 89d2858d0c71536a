//! Plugin log lines on their way into the host's structured log: tagged with
//! the tenant and pipeline, and rate-limited per pipeline so one chatty or
//! hostile plugin cannot drown the others' lines (or the disk).
//!
//! Two limits apply. Per call, `limits.log_bytes_per_row` is a hard budget
//! whose breach stops the call (see `StoreState::log`). Across calls,
//! `limits.log_lines_per_second` is a token bucket here: lines over it are
//! dropped and counted, and the count is reported at most once a second.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Severity of a plugin's log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Fine detail.
    Trace,
    /// Debugging.
    Debug,
    /// Normal operation.
    Info,
    /// Something looks wrong.
    Warn,
    /// Something failed.
    Error,
}

/// One pipeline's route for its plugin's log lines.
#[derive(Debug)]
pub struct LogRoute {
    tenant: Arc<str>,
    pipeline: Arc<str>,
    bucket: Mutex<Bucket>,
    dropped: AtomicU64,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    per_second: f64,
    refilled: Instant,
    reported: Instant,
    unreported: u64,
}

/// How often dropped lines are reported, at most.
const REPORT_EVERY: Duration = Duration::from_secs(1);

impl LogRoute {
    /// A route allowing `lines_per_second` lines, in bursts of up to one
    /// second's worth.
    pub fn new(tenant: Arc<str>, pipeline: Arc<str>, lines_per_second: u32) -> Self {
        let per_second = f64::from(lines_per_second.max(1));
        let now = Instant::now();
        Self {
            tenant,
            pipeline,
            bucket: Mutex::new(Bucket {
                tokens: per_second,
                per_second,
                refilled: now,
                reported: now,
                unreported: 0,
            }),
            dropped: AtomicU64::new(0),
        }
    }

    /// Lines dropped by the rate limit so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Writes one line if the rate allows, else counts it as dropped. A line
    /// below the host's log level costs nothing and counts against nothing.
    pub fn emit(&self, level: Level, message: &str) {
        let shown = match level {
            Level::Trace => tracing::enabled!(target: "freshet::plugin_log", tracing::Level::TRACE),
            Level::Debug => tracing::enabled!(target: "freshet::plugin_log", tracing::Level::DEBUG),
            Level::Info => tracing::enabled!(target: "freshet::plugin_log", tracing::Level::INFO),
            Level::Warn => tracing::enabled!(target: "freshet::plugin_log", tracing::Level::WARN),
            Level::Error => tracing::enabled!(target: "freshet::plugin_log", tracing::Level::ERROR),
        };
        if !shown {
            return;
        }
        let admitted = {
            let mut b = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            let refill = now.duration_since(b.refilled).as_secs_f64() * b.per_second;
            b.tokens = (b.tokens + refill).min(b.per_second);
            b.refilled = now;
            if b.tokens >= 1.0 {
                b.tokens -= 1.0;
                true
            } else {
                b.unreported += 1;
                false
            }
        };
        if !admitted {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let (tenant, pipeline) = (&*self.tenant, &*self.pipeline);
        match level {
            Level::Trace => {
                tracing::trace!(target: "freshet::plugin_log", tenant, pipeline, "{message}")
            }
            Level::Debug => {
                tracing::debug!(target: "freshet::plugin_log", tenant, pipeline, "{message}")
            }
            Level::Info => {
                tracing::info!(target: "freshet::plugin_log", tenant, pipeline, "{message}")
            }
            Level::Warn => {
                tracing::warn!(target: "freshet::plugin_log", tenant, pipeline, "{message}")
            }
            Level::Error => {
                tracing::error!(target: "freshet::plugin_log", tenant, pipeline, "{message}")
            }
        }
    }

    /// Reports lines dropped since the last report, if a report is due.
    pub fn report(&self) {
        let dropped = {
            let mut b = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
            if b.unreported == 0 || b.reported.elapsed() < REPORT_EVERY {
                return;
            }
            b.reported = Instant::now();
            std::mem::take(&mut b.unreported)
        };
        tracing::warn!(tenant = %self.tenant, pipeline = %self.pipeline, dropped, "plugin log lines over limits.log_lines_per_second were dropped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_over_the_rate_are_dropped_and_counted() {
        let route = LogRoute::new("t".into(), "p".into(), 10);
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_writer(std::io::sink)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            for _ in 0..1000 {
                route.emit(Level::Info, "hello");
            }
            // Below the host's level: not written, not counted.
            route.emit(Level::Debug, "quiet");
        });
        // One second's burst got through (give or take the refill during
        // the loop); the rest were counted.
        let dropped = route.dropped();
        assert!((985..=990).contains(&dropped), "dropped {dropped}");
    }
}
