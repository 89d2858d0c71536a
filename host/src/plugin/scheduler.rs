//! Where plugin calls run, and who goes first when tenants compete for CPU.
//!
//! Two pools of plugin threads, each fed first come, first served: a
//! *normal* pool, and a *background* pool whose threads run at the lowest OS
//! priority (nice 19). Each pipeline has at most one call queued at a time
//! (its reader maps one page after another), so a FIFO queue is round robin
//! between pipelines. A pipeline whose plugin kept a thread busy more than
//! `engine.heavy_cpu_share` of the last second — or whose last call burnt
//! its whole instruction budget or deadline — runs in the background pool
//! until a second passes under the share.
//!
//! This is work-conserving: a heavy plugin still gets every core nobody
//! else wants, but the kernel gives the light pipelines' threads (and the
//! host's own I/O threads) the CPU first, so a tenant burning its budget on
//! every row costs the others little. The share is measured in wall time on
//! purpose: a demoted plugin that waits for CPU still counts as busy, so it
//! does not bounce back into the normal pool just because it was starved.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

type Job = Box<dyn FnOnce() + Send>;

/// The plugin threads of the process.
pub struct Scheduler {
    normal: Pool,
    background: Pool,
    heavy_share: f64,
}

struct Pool {
    queue: mpsc::Sender<Job>,
}

/// How long a pipeline's CPU share is measured over.
const WINDOW: Duration = Duration::from_secs(1);

impl Scheduler {
    /// `threads` normal and `threads` background threads.
    pub fn new(threads: usize, heavy_share: f64) -> std::io::Result<Self> {
        Ok(Self {
            normal: Pool::start("freshet-plugin", threads, false)?,
            background: Pool::start("freshet-plugin-bg", threads, true)?,
            heavy_share,
        })
    }

    /// Runs `job` (a plugin call) on a plugin thread of the class `cpu`
    /// says, records how long it took, and returns its answer. A panic in
    /// `job` is resumed in the caller.
    pub async fn run<R: Send + 'static>(
        &self,
        cpu: &Arc<CpuMeter>,
        job: impl FnOnce() -> R + Send + 'static,
    ) -> R {
        let pool = if cpu.is_heavy(self.heavy_share) {
            &self.background
        } else {
            &self.normal
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let meter = cpu.clone();
        let share = self.heavy_share;
        pool.submit(Box::new(move || {
            let started = Instant::now();
            let answer = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
            meter.record(started.elapsed(), share);
            let _ = tx.send(answer);
        }));
        match rx.await {
            Ok(Ok(answer)) => answer,
            Ok(Err(panic)) => std::panic::resume_unwind(panic),
            Err(_) => panic!("a plugin thread exited"),
        }
    }
}

impl Pool {
    fn start(name: &str, threads: usize, background: bool) -> std::io::Result<Self> {
        let (queue, jobs) = mpsc::channel::<Job>();
        let jobs = Arc::new(Mutex::new(jobs));
        for i in 0..threads.max(1) {
            let jobs = jobs.clone();
            std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || {
                    if background {
                        lower_priority();
                    }
                    loop {
                        let job = jobs.lock().unwrap_or_else(|e| e.into_inner()).recv();
                        match job {
                            Ok(job) => job(),
                            // The scheduler is gone.
                            Err(_) => break,
                        }
                    }
                })?;
        }
        Ok(Self { queue })
    }

    fn submit(&self, job: Job) {
        // The threads live as long as the receiving end, which they own;
        // they only stop when `queue` is dropped.
        let _ = self.queue.send(job);
    }
}

/// Sets the calling thread to the lowest scheduling priority.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: plain syscalls on the calling thread's own id; on Linux
        // the nice value is per thread.
        #[allow(unsafe_code)]
        let result = unsafe {
            let tid = libc::gettid();
            libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 19)
        };
        if result != 0 {
            tracing::warn!(error = %std::io::Error::last_os_error(), "cannot lower the background plugin threads' priority");
        }
    }
}

/// One pipeline's recent use of plugin threads.
#[derive(Debug)]
pub struct CpuMeter {
    window: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    started: Instant,
    busy: Duration,
    heavy: bool,
}

impl Default for CpuMeter {
    fn default() -> Self {
        Self {
            window: Mutex::new(Window {
                started: Instant::now(),
                busy: Duration::ZERO,
                heavy: false,
            }),
        }
    }
}

impl CpuMeter {
    /// Whether the pipeline counts as heavy now (closing the window if it
    /// is over).
    pub fn is_heavy(&self, share: f64) -> bool {
        let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        w.roll(share);
        w.heavy
    }

    /// Adds one call's time.
    fn record(&self, took: Duration, share: f64) {
        let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        w.busy += took;
        w.roll(share);
    }

    /// Marks the pipeline heavy until a whole window passes under the share:
    /// its last call spent all the CPU it was allowed.
    pub fn mark_heavy(&self) {
        let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        w.heavy = true;
    }
}

impl Window {
    fn roll(&mut self, share: f64) {
        let elapsed = self.started.elapsed();
        if elapsed < WINDOW {
            return;
        }
        self.heavy = self.busy.as_secs_f64() > share * elapsed.as_secs_f64();
        self.started = Instant::now();
        self.busy = Duration::ZERO;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pipeline_busy_past_its_share_is_heavy_until_a_quiet_window() {
        let meter = CpuMeter::default();
        assert!(!meter.is_heavy(0.5));
        meter.record(Duration::from_millis(900), 0.5);
        std::thread::sleep(WINDOW);
        assert!(meter.is_heavy(0.5), "900 ms busy in ~1 s is over half");
        std::thread::sleep(WINDOW);
        assert!(!meter.is_heavy(0.5), "a quiet second clears it");
        meter.mark_heavy();
        assert!(meter.is_heavy(0.5));
    }

    #[tokio::test]
    async fn jobs_run_on_plugin_threads_and_panics_reach_the_caller() {
        let scheduler = Scheduler::new(1, 0.5).unwrap();
        let meter = Arc::new(CpuMeter::default());
        let name = scheduler
            .run(&meter, || std::thread::current().name().map(str::to_owned))
            .await;
        assert_eq!(name.as_deref(), Some("freshet-plugin-0"));
        meter.mark_heavy();
        let name = scheduler
            .run(&meter, || std::thread::current().name().map(str::to_owned))
            .await;
        assert_eq!(name.as_deref(), Some("freshet-plugin-bg-0"));
        let panicked = tokio::spawn(async move {
            scheduler.run(&meter, || panic!("on purpose")).await;
        })
        .await;
        assert!(panicked.is_err());
    }
}
