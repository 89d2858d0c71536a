//! Where plugin calls run, and who goes first when tenants compete for CPU.
//!
//! Two pools of plugin threads, each fed first come, first served: a
//! *normal* pool, and a *background* pool whose threads are in the kernel's
//! idle scheduling class (`SCHED_IDLE`). Each pipeline has at most one job queued at a time
//! (its reader maps one page after another), so a FIFO queue is round robin
//! between pipelines. A pipeline whose calls spent more than
//! `engine.heavy_fuel_share` of their instruction budget over the last
//! second — or whose call ran out of fuel or time — is *heavy*: its calls
//! run in the background pool until a second passes under the share.
//!
//! Heaviness is measured against the pipeline's own budget (fuel is
//! deterministic: the same rows cost the same whatever else runs), not in
//! CPU time: a light plugin catching up on a backlog keeps a thread busy
//! all the time yet spends a sliver of its budget per row, and stays normal.
//! The scheme is work-conserving: a heavy plugin still gets every core
//! nobody else wants, but the kernel gives the light pipelines' threads (and
//! the host's own I/O threads) the CPU first, so a tenant burning its
//! budget on every row costs the others little.

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
    /// `threads` normal and `threads` background threads; pipelines
    /// spending more than `heavy_share` of their fuel budget are heavy.
    pub fn new(threads: usize, heavy_share: f64) -> std::io::Result<Self> {
        Ok(Self {
            normal: Pool::start("freshet-plugin", threads, false)?,
            background: Pool::start("freshet-plugin-bg", threads, true)?,
            heavy_share,
        })
    }

    /// Runs `job` (plugin calls) on a plugin thread of the class `cpu` says
    /// and returns its answer. A panic in `job` is resumed in the caller.
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
        pool.submit(Box::new(move || {
            let answer = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
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

/// Puts the calling thread in the kernel's idle scheduling class
/// (`SCHED_IDLE`): it runs only on CPU no normal thread wants, and any
/// normal thread that wakes up preempts it at once (a nice-19 thread would
/// keep the CPU until its slice ends, delaying the pipelines' I/O threads).
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: a plain syscall on the calling thread (pid 0), with a
        // valid pointer to a parameter that outlives the call.
        #[allow(unsafe_code)]
        let result = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
        if result != 0 {
            tracing::warn!(error = %std::io::Error::last_os_error(), "cannot put the background plugin threads in the idle scheduling class");
        }
    }
}

/// One pipeline's recent spending of its fuel budget.
#[derive(Debug)]
pub struct CpuMeter {
    window: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    started: Instant,
    used: u64,
    budget: u64,
    heavy: bool,
}

impl Default for CpuMeter {
    fn default() -> Self {
        Self {
            window: Mutex::new(Window {
                started: Instant::now(),
                used: 0,
                budget: 0,
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

    /// Adds one call's spending: `used` of `budget` fuel.
    pub fn record(&self, used: u64, budget: u64) {
        let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        w.used = w.used.saturating_add(used);
        w.budget = w.budget.saturating_add(budget);
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
        if self.started.elapsed() < WINDOW {
            return;
        }
        // A window in which no call finished is no evidence either way: a
        // heavy plugin starved in the background must not look light.
        if self.budget > 0 {
            self.heavy = self.used as f64 > share * self.budget as f64;
        }
        self.started = Instant::now();
        self.used = 0;
        self.budget = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pipeline_spending_most_of_its_budget_is_heavy_until_a_light_window() {
        let meter = CpuMeter::default();
        assert!(!meter.is_heavy(0.5));
        meter.record(900, 1000);
        std::thread::sleep(WINDOW);
        assert!(meter.is_heavy(0.5), "900 of 1000 is over half");
        std::thread::sleep(WINDOW);
        assert!(
            meter.is_heavy(0.5),
            "a second without calls changes nothing"
        );
        meter.record(10, 1000);
        std::thread::sleep(WINDOW);
        assert!(!meter.is_heavy(0.5), "a light second clears it");
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
