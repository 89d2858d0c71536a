//! Many hosts, one config: the pipelines are shared out through leases in
//! the PostgreSQL state store, and this module is each host's keeper.
//!
//! Every `lease_ttl / 3` the keeper says the host is alive, renews the
//! leases it holds, and moves towards its fair share, `ceil(total weight /
//! live hosts)`, where a pipeline weighs its tenant's `weight` (1 unless
//! configured, so by default the share is of the number of pipelines): it
//! claims free or expired pipelines while it holds less, and gives back
//! (after the pages in flight commit) what it can while staying at or above
//! its share. That rule is stable: a host only takes while below its share
//! and only gives what leaves it at or above, so a pipeline is never handed
//! back and forth. A
//! claim bumps the pipeline's epoch; every commit checks it in its own
//! transaction ([`crate::state::Fence`]), so a host that lost a lease can
//! never move an offset or mark an action done, and it stops sending once
//! its own clock says the lease ran out ([`Hold::check`]). At shutdown the
//! keeper stops its pipelines and gives their leases back, so the others
//! take them at their next tick instead of after the TTL.
//!
//! With `--once` a host claims every pipeline it can (not a share), drains
//! each under its lease, gives it back, and returns. A pipeline still held
//! elsewhere after two TTLs (a crashed holder's lease has ended by then) is
//! a live host's to drain, and is left to it.

mod hold;

pub use hold::{lease_lost, Hold, LeaseExpired};

use crate::ops::control::Phase;
use crate::pipeline::{Pipeline, RunOptions, Stats};
use crate::state::postgres::{Claimed, PostgresState};
use crate::state::{Fence, StateError};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// This host's name in the leases: `FRESHET_HOST_ID`, else the machine's
/// hostname and the process id (unique among live processes, and a
/// restarted host is a new one: it cannot mistake its predecessor's leases
/// for its own).
pub fn host_id() -> String {
    if let Ok(id) = std::env::var("FRESHET_HOST_ID") {
        if !id.trim().is_empty() {
            return id.trim().to_owned();
        }
    }
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    let name = if name.is_empty() { "host".into() } else { name };
    format!("{name}-{}", std::process::id())
}

/// A lease this host holds, and what runs under it.
struct Held {
    hold: Arc<Hold>,
    /// Being given back: its run was asked to stop.
    releasing: bool,
    /// Its run stopped on an error retrying cannot fix (the table changed):
    /// it stays here, shown failed, rather than fail on host after host.
    failed: bool,
}

/// What a run under a lease returns to the keeper.
type Ended = (String, Arc<Hold>, anyhow::Result<Stats>);

/// The keeper of one host's leases.
struct Keeper {
    store: Arc<PostgresState>,
    host: Arc<str>,
    ttl: Duration,
    options: RunOptions,
    pipelines: BTreeMap<String, Arc<Pipeline>>,
    /// Each pipeline's weight in the fair share.
    weights: BTreeMap<String, u32>,
    held: BTreeMap<String, Held>,
    runs: JoinSet<Ended>,
    /// Which pipeline each run is, to name one whose task panicked.
    tasks: BTreeMap<tokio::task::Id, String>,
    totals: BTreeMap<String, Stats>,
    failures: Vec<String>,
    /// `--once`: the pipelines drained (or failed, or held elsewhere).
    done: std::collections::BTreeSet<String>,
    /// When this host joined.
    joined: Instant,
    shutdown: CancellationToken,
}

/// Runs this host's share of `pipelines` until `shutdown`, sharing them
/// with the other hosts of `store`; returns the counters of every run this
/// host made, per pipeline. With `options.once`, returns when every
/// pipeline is drained or held by another live host.
pub async fn run(
    store: Arc<PostgresState>,
    pipelines: Vec<Pipeline>,
    weights: BTreeMap<String, u32>,
    ttl: Duration,
    shutdown: CancellationToken,
    options: RunOptions,
) -> anyhow::Result<Vec<(String, Stats)>> {
    let host: Arc<str> = host_id().into();
    let mut keeper = Keeper {
        store,
        host,
        ttl,
        options,
        pipelines: pipelines
            .into_iter()
            .map(|p| (p.name().to_owned(), Arc::new(p)))
            .collect(),
        weights,
        held: BTreeMap::new(),
        runs: JoinSet::new(),
        tasks: BTreeMap::new(),
        totals: BTreeMap::new(),
        failures: Vec::new(),
        done: Default::default(),
        joined: Instant::now(),
        shutdown,
    };
    for p in keeper.pipelines.values() {
        p.control().set_phase(Phase::Elsewhere, None);
    }
    tracing::info!(host = %keeper.host, pipelines = keeper.pipelines.len(), ttl = ?ttl, "joining the hosts sharing these pipelines");
    keeper.keep().await;
    keeper.leave().await;
    if !keeper.failures.is_empty() {
        anyhow::bail!("{}", keeper.failures.join("\n"));
    }
    Ok(keeper.totals.into_iter().collect())
}

impl Keeper {
    /// Ticks until shutdown, handling runs as they end.
    async fn keep(&mut self) {
        let names: Vec<String> = self.pipelines.keys().cloned().collect();
        let mut registered = false;
        let mut tick = tokio::time::interval(self.ttl / 3);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                Some(ended) = self.runs.join_next_with_id() => {
                    self.joined(ended).await;
                    if self.drained() {
                        return;
                    }
                    continue;
                }
                _ = tick.tick() => {}
            }
            if !registered {
                match self.store.add_pipelines(&names).await {
                    Ok(()) => registered = true,
                    Err(e) => {
                        tracing::warn!(error = %e, "the state database did not answer; trying again");
                        continue;
                    }
                }
            }
            if let Err(e) = self.tick().await {
                // The pipelines keep running until their leases run out on
                // this host's clock; the next tick tries again.
                tracing::warn!(host = %self.host, error = %e, "renewing leases failed; pipelines stop sending when their leases run out");
            }
            if self.drained() {
                return;
            }
        }
    }

    /// `--once`: every pipeline drained, failed, or left to its holder.
    fn drained(&self) -> bool {
        self.options.once && self.runs.is_empty() && self.done.len() == self.pipelines.len()
    }

    /// Heartbeat, renewals, then claims or releases towards the fair share.
    async fn tick(&mut self) -> Result<(), StateError> {
        let sent = Instant::now();
        // A `--once` run is no member: counted live, it would lower the
        // others' shares and strand what they give back while it drains.
        let live = if self.options.once {
            1
        } else {
            self.store.heartbeat(&self.host, self.ttl).await?
        };
        let mine: Vec<String> = self.held.keys().cloned().collect();
        if !mine.is_empty() {
            let renewed = self.store.renew(&self.host, &mine, self.ttl).await?;
            let deadline = self.deadline(sent);
            for name in mine {
                let held = &self.held[&name];
                let epoch = held.hold.epoch();
                if renewed
                    .iter()
                    .any(|c| c.pipeline == name && c.epoch == epoch)
                {
                    held.hold.extend(deadline);
                } else {
                    tracing::warn!(host = %self.host, pipeline = %name, epoch, "lease lost to another host; stopping without committing");
                    held.hold.lose();
                    self.held.remove(&name);
                }
            }
        }
        let total: u64 = self.pipelines.keys().map(|n| self.weight(n)).sum();
        let share = if self.options.once {
            total
        } else {
            total.div_ceil(live.max(1) as u64)
        };
        let active: Vec<String> = self
            .held
            .iter()
            .filter(|(_, h)| !h.releasing)
            .map(|(name, _)| name.clone())
            .collect();
        let mut holding: u64 = active.iter().map(|n| self.weight(n)).sum();
        if holding < share {
            let mut free: Vec<String> = self
                .pipelines
                .keys()
                .filter(|name| !self.held.contains_key(*name) && !self.done.contains(*name))
                .cloned()
                .collect();
            while holding < share && !free.is_empty() {
                // As many as surely fit the gap (all of it when every
                // pipeline weighs 1), at least one.
                let heaviest = free.iter().map(|n| self.weight(n)).max().unwrap_or(1);
                let n = ((share - holding) / heaviest).max(1) as usize;
                let sent = Instant::now();
                let claimed = self.store.claim(&self.host, &free, n, self.ttl).await?;
                if claimed.is_empty() {
                    break;
                }
                for lease in claimed {
                    free.retain(|name| *name != lease.pipeline);
                    holding += self.weight(&lease.pipeline);
                    self.start(lease, self.deadline(sent));
                }
            }
            if self.options.once && holding < share && self.joined.elapsed() > 2 * self.ttl {
                for name in free {
                    tracing::warn!(host = %self.host, pipeline = %name, "held by another live host, which drains it; not drained by this run");
                    self.done.insert(name);
                }
            }
        } else if holding > share {
            // Give back, newest claims last to go (the highest epochs moved
            // most recently), whatever leaves this host at or above its share.
            let mut candidates: Vec<(i64, String)> = active
                .into_iter()
                .filter(|name| !self.held[name].failed)
                .map(|name| (self.held[&name].hold.epoch(), name))
                .collect();
            candidates.sort();
            let weighed: Vec<(String, u64)> = candidates
                .into_iter()
                .map(|(_, name)| {
                    let w = self.weight(&name);
                    (name, w)
                })
                .collect();
            for name in to_give_back(holding, share, &weighed) {
                tracing::info!(host = %self.host, pipeline = %name, live, share, "giving a pipeline back to balance the hosts");
                let held = self.held.get_mut(&name).expect("held");
                held.releasing = true;
                held.hold.stop().cancel();
            }
        }
        Ok(())
    }

    /// A pipeline's weight in the fair share.
    fn weight(&self, name: &str) -> u64 {
        u64::from(self.weights.get(name).copied().unwrap_or(1))
    }

    /// Where sending must stop for a lease renewed or claimed by a request
    /// sent at `sent`: its TTL from then (the database's `now()` came
    /// later), less a tenth for the two clocks' drift.
    fn deadline(&self, sent: Instant) -> Instant {
        sent + self.ttl - self.ttl / 10
    }

    /// Starts the run of a freshly claimed pipeline.
    fn start(&mut self, lease: Claimed, deadline: Instant) {
        let Some(pipeline) = self.pipelines.get(&lease.pipeline).cloned() else {
            return;
        };
        let fence = Fence {
            owner: self.host.clone(),
            epoch: lease.epoch,
        };
        let hold = Arc::new(Hold::new(
            &lease.pipeline,
            fence,
            deadline,
            self.shutdown.child_token(),
        ));
        tracing::info!(host = %self.host, pipeline = %lease.pipeline, epoch = lease.epoch, "lease claimed");
        self.held.insert(
            lease.pipeline.clone(),
            Held {
                hold: hold.clone(),
                releasing: false,
                failed: false,
            },
        );
        let options = self.options;
        let lease_name = lease.pipeline.clone();
        let task = self.runs.spawn(async move {
            let result = pipeline.run_leased(&hold, options).await;
            (pipeline.name().to_owned(), hold, result)
        });
        self.tasks.insert(task.id(), lease_name);
    }

    /// A run ended: count it, and give the lease back unless it was lost
    /// (or the pipeline failed for good, which stays here).
    async fn ended(&mut self, (name, hold, result): Ended) {
        match result {
            Ok(stats) => self.totals.entry(name.clone()).or_default().add(&stats),
            Err(e) => {
                tracing::error!(pipeline = %name, error = %format!("{e:#}"), "pipeline stopped on an error");
                self.failures.push(format!("{e:#}"));
                if self.options.once {
                    self.done.insert(name.clone());
                }
                // Only if it is still this run's lease: a run that lost
                // its lease may end after the pipeline was claimed again.
                if let Some(held) = self.held.get_mut(&name) {
                    if held.hold.epoch() == hold.epoch() {
                        held.failed = true;
                    }
                }
                return;
            }
        }
        // `--once`: drained only if the run ended under its lease; one that
        // ran out or was lost is claimed again at a later tick.
        if self.options.once && !hold.is_lost() && hold.check().is_ok() {
            self.done.insert(name.clone());
        }
        if hold.is_lost() {
            self.pipelines[&name]
                .control()
                .set_phase(Phase::Elsewhere, None);
            return;
        }
        let lease = Claimed {
            pipeline: name.clone(),
            epoch: hold.epoch(),
        };
        match self.store.release(&self.host, &lease).await {
            Ok(true) => {
                tracing::info!(host = %self.host, pipeline = %name, epoch = lease.epoch, "lease given back")
            }
            Ok(false) => {
                tracing::info!(host = %self.host, pipeline = %name, epoch = lease.epoch, "lease already another host's; nothing given back")
            }
            Err(e) => {
                tracing::warn!(host = %self.host, pipeline = %name, error = %e, "giving the lease back failed; it ends at its TTL")
            }
        }
        if self
            .held
            .get(&name)
            .is_some_and(|h| h.hold.epoch() == lease.epoch)
        {
            self.held.remove(&name);
        }
        self.pipelines[&name]
            .control()
            .set_phase(Phase::Elsewhere, None);
    }

    /// A run's task ended, returning or panicking.
    async fn joined(&mut self, ended: Result<(tokio::task::Id, Ended), tokio::task::JoinError>) {
        match ended {
            Ok((id, ended)) => {
                self.tasks.remove(&id);
                self.ended(ended).await;
            }
            Err(e) => self.panicked(&e),
        }
    }

    /// A run's task panicked: the pipeline is failed here (kept, so it is
    /// not renewed elsewhere into the same panic), and done for `--once`.
    fn panicked(&mut self, e: &tokio::task::JoinError) {
        let Some(name) = self.tasks.remove(&e.id()) else {
            tracing::error!(error = %e, "a pipeline's task panicked");
            return;
        };
        tracing::error!(pipeline = %name, error = %e, "a pipeline's task panicked");
        self.failures
            .push(format!("pipeline {name}: its task panicked: {e}"));
        if self.options.once {
            self.done.insert(name.clone());
        }
        if let Some(held) = self.held.get_mut(&name) {
            held.failed = true;
        }
    }

    /// At shutdown: the runs stop (their tokens are the shutdown's
    /// children), commit what is in flight, and give their leases back.
    async fn leave(&mut self) {
        while let Some(ended) = self.runs.join_next_with_id().await {
            self.joined(ended).await;
        }
        // What stayed here failed: free for a host where it may work.
        let failed: Vec<(String, i64)> = self
            .held
            .iter()
            .map(|(name, h)| (name.clone(), h.hold.epoch()))
            .collect();
        for (pipeline, epoch) in failed {
            let lease = Claimed { pipeline, epoch };
            if let Err(e) = self.store.release(&self.host, &lease).await {
                tracing::warn!(host = %self.host, pipeline = %lease.pipeline, error = %e, "giving the lease back failed; it ends at its TTL");
            }
        }
        if let Err(e) = self.store.leave(&self.host).await {
            tracing::warn!(host = %self.host, error = %e, "could not say this host left; the others notice at its heartbeat's end");
        }
        tracing::info!(host = %self.host, "left the hosts sharing these pipelines");
    }
}

/// Which of `candidates` (name, weight; in the order to give them back) a
/// host holding `holding` gives back to come down towards `share`: each
/// that leaves it at or above the share.
fn to_give_back(holding: u64, share: u64, candidates: &[(String, u64)]) -> Vec<String> {
    let mut left = holding;
    let mut out = Vec::new();
    for (name, weight) in candidates {
        if left >= share + weight {
            left -= weight;
            out.push(name.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::to_give_back;

    fn weighed(items: &[(&str, u64)]) -> Vec<(String, u64)> {
        items.iter().map(|(n, w)| ((*n).to_owned(), *w)).collect()
    }

    #[test]
    fn by_count_the_excess_goes_back_in_order() {
        let held = weighed(&[("a", 1), ("b", 1), ("c", 1), ("d", 1), ("e", 1)]);
        assert_eq!(to_give_back(5, 3, &held), ["a", "b"]);
        assert!(to_give_back(3, 3, &held).is_empty());
    }

    #[test]
    fn a_heavy_pipeline_stays_when_giving_it_would_drop_below_the_share() {
        // Weight 10 held as a heavy 5 and five of 1; the share is 5.
        let heavy_first = weighed(&[("h", 5), ("a", 1), ("b", 1), ("c", 1), ("d", 1), ("e", 1)]);
        assert_eq!(to_give_back(10, 5, &heavy_first), ["h"]);
        let heavy_later = weighed(&[("a", 1), ("b", 1), ("h", 5), ("c", 1), ("d", 1), ("e", 1)]);
        assert_eq!(to_give_back(10, 5, &heavy_later), ["a", "b", "c", "d", "e"]);
        // 8 held as 5 + 3 x 1 with a share of 7: one of 1 goes, the 5 stays.
        let over = weighed(&[("h", 5), ("a", 1), ("b", 1), ("c", 1)]);
        assert_eq!(to_give_back(8, 7, &over), ["a"]);
    }
}
