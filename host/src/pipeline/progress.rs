//! Catch-up progress: when a pipeline starts behind (a backfill, or a long
//! stop), how many rows are done, the rate, and the time left. A bar on a
//! terminal; otherwise a log line at the start, every [`LOG_EVERY`], and at
//! the end.

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal as _;
use std::time::{Duration, Instant};

/// How often a log line reports progress when stderr is not a terminal.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Progress of one catch-up.
pub(super) struct Progress {
    pipeline: String,
    total: u64,
    done: u64,
    started: Instant,
    last_log: Instant,
    bar: Option<ProgressBar>,
}

impl Progress {
    /// Starts reporting: `total` rows are waiting.
    pub(super) fn start(pipeline: &str, total: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix} [{bar:30}] {pos}/{len} rows, {per_sec}, {eta} left",
                )
                .expect("a valid template")
                .progress_chars("=> "),
            );
            bar.set_prefix(pipeline.to_owned());
            bar
        });
        if bar.is_none() {
            tracing::info!(pipeline, rows_left = total, "catching up");
        }
        let now = Instant::now();
        Self {
            pipeline: pipeline.to_owned(),
            total,
            done: 0,
            started: now,
            last_log: now,
            bar,
        }
    }

    /// `rows` more were committed.
    pub(super) fn advance(&mut self, rows: u64) {
        self.done += rows;
        if let Some(bar) = &self.bar {
            bar.set_position(self.done);
        } else if self.last_log.elapsed() >= LOG_EVERY {
            self.last_log = Instant::now();
            let rate = self.rate();
            let left = self.total.saturating_sub(self.done);
            let eta = if rate > 0.0 {
                format!("{:.0}s", left as f64 / rate)
            } else {
                "unknown".to_owned()
            };
            tracing::info!(pipeline = %self.pipeline, rows_done = self.done, rows_left = left, rows_per_s = rate.round(), eta = %eta, "catching up");
        }
    }

    /// The table is read up to the bound: the catch-up is over.
    /// Rows still to read, as far as the count at the start knew.
    pub(super) fn left(&self) -> u64 {
        self.total.saturating_sub(self.done)
    }

    pub(super) fn finish(self) {
        let rate = self.rate();
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        tracing::info!(pipeline = %self.pipeline, rows = self.done, seconds = self.started.elapsed().as_secs_f64().round(), rows_per_s = rate.round(), "caught up");
    }

    fn rate(&self) -> f64 {
        self.done as f64 / self.started.elapsed().as_secs_f64().max(1e-3)
    }
}
