//! Where plugin calls run, and who goes first when tenants compete for CPU.
//!
//! Two pools of plugin threads: a *normal* pool, and a *background* pool
//! whose threads are in the kernel's idle scheduling class (`SCHED_IDLE`).
//! A pipeline whose calls spent more than `engine.heavy_fuel_share` of their
//! instruction budget over the last second — or whose call ran out of fuel
//! or time — is *heavy*: its calls run in the background pool until a
//! second passes under the share.
//!
//! Within a pool, tenants share the threads: while several are active, a
//! tenant runs at most its share of them (threads ÷ active tenants, rounded
//! up) at once, and a free thread takes the oldest job of the tenant with
//! the fewest jobs running, then the least thread time used. A tenant stays
//! active for [`GRACE`] after its last job, so the moment between one call
//! and its pipeline's next does not hand its thread to a neighbour; an idle
//! tenant comes back level with the least-served active one, banking no
//! credit. So a pipeline running several calls at once (its `instances`),
//! or a tenant owning many pipelines, buys no more than the tenant's share
//! while others have work; alone, a tenant gets every thread.
//!
//! Heaviness is measured against the pipeline's own budget (fuel is
//! deterministic: the same rows cost the same whatever else runs), not in
//! CPU time: a light plugin catching up on a backlog keeps a thread busy
//! all the time yet spends a sliver of its budget per row, and stays normal.
//! The scheme is work-conserving: a heavy plugin still gets every core
//! nobody else wants, but the kernel gives the light pipelines' threads (and
//! the host's own I/O threads) the CPU first, so a tenant burning its
//! budget on every row costs the others little.

use prometheus_client::metrics::counter::Counter;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

type Job = Box<dyn FnOnce() + Send>;

/// The plugin threads of the process.
pub struct Scheduler {
    normal: Pool,
    background: Pool,
    heavy_share: f64,
}

/// Threads taking jobs from a [`Queue`]; stops them when dropped.
struct Pool {
    shared: Arc<Shared>,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    threads: usize,
}

/// The jobs waiting in one pool, by tenant.
#[derive(Default)]
struct Queue {
    tenants: HashMap<Arc<str>, Tenant>,
    /// Jobs queued so far: orders jobs (and breaks ties) by arrival.
    arrivals: u64,
    closed: bool,
}

/// One active tenant: its waiting jobs and its use of the pool's threads.
struct Tenant {
    jobs: VecDeque<(u64, Job)>,
    running: usize,
    used: Duration,
    /// When it last queued or finished a job.
    seen: Instant,
}

/// How long a tenant with nothing queued or running still counts as active.
const GRACE: Duration = Duration::from_millis(50);

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

    /// Runs `job` (plugin calls of one of `tenant`'s pipelines) on a plugin
    /// thread of the class `cpu` says, in the tenant's turn, and returns its
    /// answer. A panic in `job` is resumed in the caller.
    pub async fn run<R: Send + 'static>(
        &self,
        tenant: &Arc<str>,
        cpu: &Arc<CpuMeter>,
        job: impl FnOnce() -> R + Send + 'static,
    ) -> R {
        let pool = if cpu.is_heavy(self.heavy_share) {
            &self.background
        } else {
            &self.normal
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        pool.submit(
            tenant,
            Box::new(move || {
                let answer = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                let _ = tx.send(answer);
            }),
        );
        match rx.await {
            Ok(Ok(answer)) => answer,
            Ok(Err(panic)) => std::panic::resume_unwind(panic),
            Err(_) => panic!("a plugin thread exited"),
        }
    }
}

impl Pool {
    fn start(name: &str, threads: usize, background: bool) -> std::io::Result<Self> {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            threads,
        });
        for i in 0..threads {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || {
                    if background {
                        lower_priority();
                    }
                    shared.work();
                })?;
        }
        Ok(Self { shared })
    }

    fn submit(&self, tenant: &Arc<str>, job: Job) {
        let mut queue = self.shared.lock();
        queue.arrivals += 1;
        let arrival = queue.arrivals;
        let level = queue.tenants.values().map(|t| t.used).min();
        let entry = queue
            .tenants
            .entry(tenant.clone())
            .or_insert_with(|| Tenant {
                jobs: VecDeque::new(),
                running: 0,
                // Level with the least-served active tenant: an idle spell
                // earns no credit against the others.
                used: level.unwrap_or_default(),
                seen: Instant::now(),
            });
        entry.jobs.push_back((arrival, job));
        entry.seen = Instant::now();
        drop(queue);
        self.shared.wake.notify_one();
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_all();
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A plugin thread's life: the next job in fair order, until the pool
    /// is dropped.
    fn work(&self) {
        let mut queue = self.lock();
        loop {
            if queue.closed {
                return;
            }
            let Some((tenant, job)) = queue.next(self.threads) else {
                queue = if queue.tenants.values().any(|t| !t.jobs.is_empty()) {
                    // Held back by a share: until a job ends (which
                    // notifies) or an idle tenant's grace runs out.
                    let waited = self.wake.wait_timeout(queue, GRACE);
                    waited.unwrap_or_else(|e| e.into_inner()).0
                } else {
                    self.wake.wait(queue).unwrap_or_else(|e| e.into_inner())
                };
                continue;
            };
            drop(queue);
            let started = Instant::now();
            // Jobs catch their own panics (see `Scheduler::run`).
            job();
            let took = started.elapsed();
            queue = self.lock();
            if let Some(t) = queue.tenants.get_mut(&tenant) {
                t.running -= 1;
                t.used += took;
                t.seen = Instant::now();
            }
            // A share may have freed: another thread may take a job now.
            self.wake.notify_one();
        }
    }
}

impl Queue {
    /// Forgets tenants idle past their grace; then takes the oldest job of
    /// the tenant under its share with the fewest jobs running, then the
    /// least use.
    fn next(&mut self, threads: usize) -> Option<(Arc<str>, Job)> {
        let now = Instant::now();
        self.tenants.retain(|_, t| {
            !t.jobs.is_empty() || t.running > 0 || now.duration_since(t.seen) < GRACE
        });
        let share = threads.div_ceil(self.tenants.len().max(1));
        let (tenant, entry) = self
            .tenants
            .iter_mut()
            .filter(|(_, t)| t.running < share)
            .filter_map(|(name, t)| Some(((t.running, t.used, t.jobs.front()?.0), name, t)))
            .min_by_key(|(order, _, _)| *order)
            .map(|(_, name, t)| (name.clone(), t))?;
        let (_, job) = entry.jobs.pop_front()?;
        entry.running += 1;
        Some((tenant, job))
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
    /// Calls and fuel, for the host's metrics (when it exports them).
    counters: std::sync::OnceLock<(Counter, Counter)>,
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
            counters: std::sync::OnceLock::new(),
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

    /// Counts every later call in `calls` and its fuel in `fuel`.
    pub fn count_into(&self, calls: Counter, fuel: Counter) {
        let _ = self.counters.set((calls, fuel));
    }

    /// Adds one call's spending: `used` of `budget` fuel.
    pub fn record(&self, used: u64, budget: u64) {
        if let Some((calls, fuel)) = self.counters.get() {
            calls.inc();
            fuel.inc_by(used);
        }
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
        let tenant: Arc<str> = "t".into();
        let name = scheduler
            .run(&tenant, &meter, || {
                std::thread::current().name().map(str::to_owned)
            })
            .await;
        assert_eq!(name.as_deref(), Some("freshet-plugin-0"));
        meter.mark_heavy();
        let name = scheduler
            .run(&tenant, &meter, || {
                std::thread::current().name().map(str::to_owned)
            })
            .await;
        assert_eq!(name.as_deref(), Some("freshet-plugin-bg-0"));
        let panicked = tokio::spawn(async move {
            scheduler
                .run(&tenant, &meter, || panic!("on purpose"))
                .await;
        })
        .await;
        assert!(panicked.is_err());
    }

    /// Jobs that hold a thread for `each`, queued by `tenant` `n` at a time
    /// for `period`; how many ran.
    async fn stream(
        scheduler: Arc<Scheduler>,
        tenant: &str,
        n: usize,
        each: Duration,
        period: Duration,
    ) -> usize {
        let (tenant, meter): (Arc<str>, _) = (tenant.into(), Arc::new(CpuMeter::default()));
        let end = Instant::now() + period;
        let lanes = (0..n).map(|_| {
            let (scheduler, tenant, meter) = (scheduler.clone(), tenant.clone(), meter.clone());
            async move {
                let mut ran = 0;
                while Instant::now() < end {
                    scheduler
                        .run(&tenant, &meter, move || std::thread::sleep(each))
                        .await;
                    ran += 1;
                }
                ran
            }
        });
        futures::future::join_all(lanes).await.into_iter().sum()
    }

    #[tokio::test]
    async fn a_tenant_running_more_calls_at_once_gets_no_more_of_the_threads() {
        // Two threads; tenant `many` keeps six calls queued (say three
        // pipelines of two instances), `one` a single call at a time.
        let scheduler = Arc::new(Scheduler::new(2, 0.5).unwrap());
        let (each, period) = (Duration::from_millis(5), Duration::from_millis(800));
        let (many, one) = tokio::join!(
            stream(scheduler.clone(), "many", 6, each, period),
            stream(scheduler.clone(), "one", 1, each, period),
        );
        // A FIFO queue would give `many` six jobs for each of `one`'s.
        let ratio = many as f64 / one as f64;
        assert!((0.75..1.35).contains(&ratio), "many {many}, one {one}");
    }

    #[tokio::test]
    async fn a_tenant_alone_gets_every_thread() {
        let scheduler = Arc::new(Scheduler::new(2, 0.5).unwrap());
        let (each, period) = (Duration::from_millis(5), Duration::from_millis(400));
        let ran = stream(scheduler, "alone", 4, each, period).await;
        // Two threads busy: about 160 jobs; one would allow 80.
        assert!(ran >= 130, "{ran}");
    }

    #[tokio::test]
    async fn on_one_thread_tenants_alternate_by_the_time_they_used() {
        // `long` queues jobs four times as long as `short`'s: on one thread
        // `short` runs about four of its jobs for each of `long`'s.
        let scheduler = Arc::new(Scheduler::new(1, 0.5).unwrap());
        let period = Duration::from_millis(800);
        let (long, short) = tokio::join!(
            stream(
                scheduler.clone(),
                "long",
                2,
                Duration::from_millis(16),
                period
            ),
            stream(
                scheduler.clone(),
                "short",
                2,
                Duration::from_millis(4),
                period
            ),
        );
        let ratio = short as f64 / long as f64;
        assert!((2.8..5.5).contains(&ratio), "long {long}, short {short}");
    }
}
