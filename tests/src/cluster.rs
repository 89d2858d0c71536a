//! A fleet of `freshet run` processes sharing pipelines through one real
//! PostgreSQL database ([`crate::postgres`]): one config file for every
//! host, pipelines `p00`, `p01`, ... over a table each (its own SQLite
//! file, order ids `k * 1_000_000 + i`), rows arriving from a writer
//! thread, and the leases, history and offsets read back from the
//! database.

use crate::postgres::{query, Postgres};
use crate::{now_ms, plugins, Order, Receiver, Setup};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The variable the hosts read the state database's URL from.
const URL_ENV: &str = "FRESHET_TEST_PG_URL";

/// Order ids of pipeline `k` start here.
pub fn first_id(k: usize) -> i64 {
    k as i64 * 1_000_000
}

/// Hosts, pipelines and their tables.
pub struct Fleet {
    /// The pipelines' folders and tables.
    pub setups: Vec<Setup>,
    /// The state database.
    pub url: String,
    /// The config every host runs.
    pub config: PathBuf,
    /// The lease TTL.
    pub ttl: Duration,
    hosts: BTreeMap<String, Child>,
    logs: tempfile::TempDir,
    /// Rows inserted so far, per pipeline (the lock orders the writers).
    inserted: Arc<Vec<Mutex<i64>>>,
}

impl Fleet {
    /// `pipelines` pipelines delivering to `receiver`, sharing a new
    /// database with leases of `ttl`; `rows` rows in each table already.
    pub fn new(receiver: &Receiver, pipelines: usize, rows: i64, ttl: Duration) -> Self {
        Self::build(receiver, &[], pipelines, rows, ttl)
    }

    /// As [`Fleet::new`], the pipelines dealt in order to `tenants`: each
    /// (name, weight, how many pipelines).
    pub fn weighted(
        receiver: &Receiver,
        tenants: &[(&str, u32, usize)],
        rows: i64,
        ttl: Duration,
    ) -> Self {
        let pipelines = tenants.iter().map(|t| t.2).sum();
        Self::build(receiver, tenants, pipelines, rows, ttl)
    }

    fn build(
        receiver: &Receiver,
        tenants: &[(&str, u32, usize)],
        pipelines: usize,
        rows: i64,
        ttl: Duration,
    ) -> Self {
        let owners: Vec<&str> = tenants
            .iter()
            .flat_map(|(name, _, n)| std::iter::repeat_n(*name, *n))
            .collect();
        let url = Postgres::get().database("fleet");
        // The schema, as the first host would make it: the fleet's queries
        // may come before any host connected.
        freshet::state::postgres::PostgresState::connect(&url, std::time::Duration::from_secs(2))
            .expect("migrate the database");
        let mut setups = Vec::new();
        for k in 0..pipelines {
            let mut setup = Setup::new(plugins::ORDERS_PLUGIN);
            setup.pipeline.name = format!("p{k:02}");
            setup.pipeline.page_size = 50;
            setup.pipeline.tenant = owners.get(k).map(|t| (*t).to_owned());
            setup.pipeline.shared_state = Some(freshet::bench::SharedState {
                url_env: URL_ENV.into(),
                lease_ttl_ms: ttl.as_millis() as u64,
            });
            setups.push(setup);
        }
        let mut text = setups[0].config_text(receiver);
        for setup in &setups[1..] {
            text.push_str(&setup.pipeline_text(receiver));
        }
        for (name, weight, _) in tenants {
            text.push_str(&format!(
                "\n[tenants.{name}]\nsecrets = [\"FRESHET_TEST_HOOK_KEY\"]\nweight = {weight}\n"
            ));
        }
        let logs = tempfile::tempdir().expect("logs dir");
        let config = logs.path().join("freshet.toml");
        std::fs::write(&config, text).expect("write the config");
        let inserted = Arc::new((0..pipelines).map(|_| Mutex::new(0)).collect::<Vec<_>>());
        let fleet = Self {
            setups,
            url,
            config,
            ttl,
            hosts: BTreeMap::new(),
            logs,
            inserted,
        };
        for k in 0..pipelines {
            fleet.insert(k, rows);
        }
        fleet
    }

    /// Adds `n` orders to pipeline `k`'s table, stamped now.
    pub fn insert(&self, k: usize, n: i64) {
        insert(&self.setups[k], &self.inserted[k], k, n);
    }

    /// Starts a writer adding `n` rows to every table every `every`, until
    /// the returned flag is set; join the handle to wait for its last rows.
    pub fn keep_inserting(&self, n: i64, every: Duration) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let tables: Vec<(PathBuf, usize)> = self
            .setups
            .iter()
            .enumerate()
            .map(|(k, s)| (s.db.clone(), k))
            .collect();
        let (inserted, flag) = (self.inserted.clone(), stop.clone());
        let handle = std::thread::spawn(move || {
            while !flag.load(Ordering::SeqCst) {
                for (db, k) in &tables {
                    insert_into(db, &inserted[*k], *k, n);
                }
                std::thread::sleep(every);
            }
        });
        Writer {
            stop,
            handle: Some(handle),
        }
    }

    /// Every order id inserted so far.
    pub fn all_ids(&self) -> Vec<i64> {
        (0..self.setups.len())
            .flat_map(|k| {
                let n = *self.inserted[k].lock().expect("count");
                (1..=n).map(move |i| first_id(k) + i)
            })
            .collect()
    }

    /// Starts host `name` (its `FRESHET_HOST_ID`).
    pub fn start(&mut self, name: &str) {
        let log = std::fs::File::create(self.log_path(name)).expect("log file");
        let child = crate::freshet()
            .args(["run", "--config"])
            .arg(&self.config)
            .env(URL_ENV, &self.url)
            .env("FRESHET_HOST_ID", name)
            .env("FRESHET_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start freshet");
        self.hosts.insert(name.to_owned(), child);
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.logs.path().join(format!("{name}.log"))
    }

    /// Host `name`'s log so far.
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.log_path(name)).unwrap_or_default()
    }

    /// Sends `signal` (`KILL`, `STOP`, `CONT`, `TERM`) to host `name`.
    pub fn signal(&self, name: &str, signal: &str) {
        let pid = self.hosts[name].id();
        let ok = Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{signal} {name}");
    }

    /// SIGKILL, and reaps it.
    pub fn kill(&mut self, name: &str) {
        let mut child = self.hosts.remove(name).expect("running");
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
    }

    /// SIGTERM to every host; each must exit 0.
    pub fn stop_all(&mut self) {
        let names: Vec<String> = self.hosts.keys().cloned().collect();
        for name in &names {
            self.signal(name, "TERM");
        }
        for name in names {
            let status = self
                .hosts
                .remove(&name)
                .expect("running")
                .wait()
                .expect("exit");
            assert!(
                status.success(),
                "{name} exited {status}:\n{}",
                self.log(&name)
            );
        }
    }

    /// Each pipeline's owner now (`None`: free).
    pub fn owners(&self) -> BTreeMap<String, Option<String>> {
        query(
            &self.url,
            "SELECT pipeline, owner FROM freshet.leases ORDER BY pipeline",
        )
        .into_iter()
        .map(|r| (r[0].clone(), Some(r[1].clone()).filter(|o| !o.is_empty())))
        .collect()
    }

    /// The pipelines `host` owns now.
    pub fn held_by(&self, host: &str) -> Vec<String> {
        self.owners()
            .into_iter()
            .filter(|(_, o)| o.as_deref() == Some(host))
            .map(|(p, _)| p)
            .collect()
    }

    /// How many pipelines each host owns now.
    pub fn shares(&self) -> BTreeMap<String, usize> {
        let mut shares = BTreeMap::new();
        for owner in self.owners().into_values().flatten() {
            *shares.entry(owner).or_default() += 1;
        }
        shares
    }

    /// Waits until `done(shares)` holds, checking every 100 ms; the time it
    /// took.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&BTreeMap<String, Option<String>>) -> bool,
    ) -> Duration {
        let start = Instant::now();
        loop {
            let owners = self.owners();
            if owners.len() == self.setups.len() && done(&owners) {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < timeout,
                "not {what} after {timeout:?}: {:?}\n{}",
                self.shares(),
                self.logs_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The last lines of every host's log, for a failure's message.
    pub fn logs_tail(&self) -> String {
        let names: Vec<String> = std::fs::read_dir(self.logs.path())
            .map(|d| {
                d.filter_map(|e| {
                    let name = e.ok()?.file_name().into_string().ok()?;
                    Some(name.strip_suffix(".log")?.to_owned())
                })
                .collect()
            })
            .unwrap_or_default();
        names
            .iter()
            .map(|name| {
                let log = self.log(name);
                let lines: Vec<&str> = log.lines().collect();
                let tail = lines[lines.len().saturating_sub(15)..].join("\n");
                format!("--- {name}\n{tail}")
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Checks the lease history: per pipeline, each claim began after the
    /// one before it ended (never two owners at once), epochs counting up
    /// by one. Returns the number of claims.
    pub fn assert_history_exclusive(&self) -> usize {
        let rows = query(
            &self.url,
            "SELECT pipeline, epoch, owner,
                    (extract(epoch FROM claimed_at) * 1e6)::bigint,
                    coalesce((extract(epoch FROM ended_at) * 1e6)::bigint, -1)
             FROM freshet.lease_history ORDER BY pipeline, epoch",
        );
        let mut last: Option<(String, i64, i64)> = None;
        for r in &rows {
            let (pipeline, epoch): (String, i64) = (r[0].clone(), r[1].parse().unwrap());
            let (claimed, ended): (i64, i64) = (r[3].parse().unwrap(), r[4].parse().unwrap());
            if let Some((p, e, end)) = &last {
                if *p == pipeline {
                    assert_eq!(epoch, e + 1, "{pipeline}: epochs {e} then {epoch}");
                    assert!(
                        *end >= 0 && *end <= claimed,
                        "{pipeline}: epoch {epoch} claimed at {claimed} while epoch {e} held it (ended {end})"
                    );
                }
            }
            last = Some((pipeline, epoch, ended));
        }
        rows.len()
    }

    /// Each pipeline's offset as `(ts_nanos, key_json)`.
    pub fn offsets(&self) -> BTreeMap<String, (i64, String)> {
        query(
            &self.url,
            "SELECT pipeline, ts_nanos, coalesce(key_json, '') FROM freshet.offsets",
        )
        .into_iter()
        .map(|r| (r[0].clone(), (r[1].parse().unwrap(), r[2].clone())))
        .collect()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Keep the hosts' logs of a failed test.
            let logs = std::mem::replace(&mut self.logs, tempfile::tempdir().expect("dir"));
            eprintln!("the hosts' logs are kept in {}", logs.keep().display());
        }
        for child in self.hosts.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The rows writer of [`Fleet::keep_inserting`].
pub struct Writer {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    /// Stops it after its current round.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            h.join().expect("writer");
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn insert(setup: &Setup, count: &Mutex<i64>, k: usize, n: i64) {
    insert_into(&setup.db, count, k, n);
}

fn insert_into(db: &std::path::Path, count: &Mutex<i64>, k: usize, n: i64) {
    let mut count = count.lock().expect("count");
    let from = *count;
    let now = now_ms();
    let orders: Vec<Order> = (from + 1..=from + n)
        .map(|i| {
            let id = first_id(k) + i;
            Order::new(id, freshet::bench::sample::status_of(id as u64), now)
        })
        .collect();
    let mut conn = rusqlite::Connection::open(db).expect("open orders db");
    conn.busy_timeout(Duration::from_secs(10))
        .expect("busy timeout");
    let tx = conn.transaction().expect("begin");
    for o in &orders {
        tx.execute(
            "INSERT INTO orders (id, customer_email, status, amount, currency, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            rusqlite::params![o.id, o.email, o.status, o.amount, o.currency, o.updated_at],
        )
        .expect("insert order");
    }
    tx.commit().expect("commit");
    *count = from + n;
}
