//! Leases in PostgreSQL: which host may act for each pipeline, until when
//! on the database's clock, and the epoch that fences a host that lost its
//! lease. The policy (how many to claim, when to give back) is
//! [`crate::cluster`]'s; these are its statements, each one transaction.

use super::{failed, pg, PostgresState};
use crate::state::{Fence, LeaseRow, StateError};
use deadpool_postgres::GenericClient;
use std::time::Duration;

/// A lease a host holds: the pipeline and the epoch its claim began.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    /// The pipeline.
    pub pipeline: String,
    /// The epoch: every commit made under the lease carries it.
    pub epoch: i64,
}

fn seconds(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Refuses the commit in `tx` unless `fence` still holds the pipeline's
/// lease; the row stays locked (shared) until `tx` ends, so a claim waits
/// for the commit and bumps the epoch only after it.
pub(super) async fn check_fence(
    tx: &impl GenericClient,
    pipeline: &str,
    fence: &Fence,
) -> Result<(), StateError> {
    let row = tx
        .query_opt(
            "SELECT owner, epoch FROM freshet.leases WHERE pipeline = $1 FOR SHARE",
            &[&pipeline],
        )
        .await
        .map_err(pg)?;
    let (owner, epoch): (Option<String>, i64) = match &row {
        Some(r) => (r.get(0), r.get(1)),
        None => (None, 0),
    };
    if owner.as_deref() == Some(&*fence.owner) && epoch == fence.epoch {
        return Ok(());
    }
    Err(StateError::Fenced {
        pipeline: pipeline.to_owned(),
        epoch: fence.epoch,
        now: match owner {
            Some(owner) => format!("{owner} at epoch {epoch}"),
            None => format!("released at epoch {epoch}"),
        },
    })
}

/// Every lease, for `freshet status`.
pub(super) async fn all(client: &impl GenericClient) -> Result<Vec<LeaseRow>, StateError> {
    let rows = client
        .query(
            "SELECT pipeline, owner, epoch,
                    CASE WHEN lease_until = '-infinity' THEN -1
                         ELSE (extract(epoch FROM lease_until - now()) * 1000)::bigint END
             FROM freshet.leases ORDER BY pipeline",
            &[],
        )
        .await
        .map_err(pg)?;
    Ok(rows
        .into_iter()
        .map(|r| LeaseRow {
            pipeline: r.get(0),
            owner: r.get(1),
            epoch: r.get(2),
            remaining_ms: r.get(3),
        })
        .collect())
}

fn claimed(rows: Vec<tokio_postgres::Row>) -> Vec<Claimed> {
    rows.into_iter()
        .map(|r| Claimed {
            pipeline: r.get(0),
            epoch: r.get(1),
        })
        .collect()
}

/// The lease statements the cluster keeper runs, each on the store's
/// runtime.
impl PostgresState {
    /// Makes sure every pipeline has a lease row (free until claimed).
    pub async fn add_pipelines(&self, pipelines: &[String]) -> Result<(), StateError> {
        let pipelines = pipelines.to_vec();
        self.run(|pool| async move {
            let client = pool.get().await.map_err(failed)?;
            client
                .execute(
                    "INSERT INTO freshet.leases (pipeline) SELECT unnest($1::text[])
                     ON CONFLICT (pipeline) DO NOTHING",
                    &[&pipelines],
                )
                .await
                .map_err(pg)?;
            Ok(())
        })
        .await
    }

    /// Says `host` is alive for `ttl` more; returns how many hosts are
    /// (this one included), for each one's fair share.
    pub async fn heartbeat(&self, host: &str, ttl: Duration) -> Result<usize, StateError> {
        let host = host.to_owned();
        self.run(|pool| async move {
            let client = pool.get().await.map_err(failed)?;
            let row = client
                .query_one(
                    "WITH seen AS (
                         INSERT INTO freshet.hosts (host, seen_until)
                         VALUES ($1, now() + make_interval(secs => $2))
                         ON CONFLICT (host) DO UPDATE SET seen_until = excluded.seen_until
                     )
                     SELECT count(*) + 1 FROM freshet.hosts WHERE seen_until > now() AND host <> $1",
                    &[&host, &seconds(ttl)],
                )
                .await
                .map_err(pg)?;
            Ok(row.get::<_, i64>(0) as usize)
        })
        .await
    }

    /// Extends `host`'s leases on `pipelines` by `ttl` from now; returns
    /// those it still holds, with their epochs (a lease another host took
    /// is not among them).
    pub async fn renew(
        &self,
        host: &str,
        pipelines: &[String],
        ttl: Duration,
    ) -> Result<Vec<Claimed>, StateError> {
        let (host, pipelines) = (host.to_owned(), pipelines.to_vec());
        self.run(|pool| async move {
            let client = pool.get().await.map_err(failed)?;
            let rows = client
                .query(
                    "UPDATE freshet.leases SET lease_until = now() + make_interval(secs => $3)
                     WHERE owner = $1 AND pipeline = ANY($2) RETURNING pipeline, epoch",
                    &[&host, &pipelines, &seconds(ttl)],
                )
                .await
                .map_err(pg)?;
            Ok(claimed(rows))
        })
        .await
    }

    /// Claims up to `n` of `among` that are free or whose lease ended (on
    /// the database's clock), bumping each one's epoch and recording the
    /// claim (and the end of the lease it replaces) in the history. Rows
    /// another host is claiming at the same moment are skipped, not waited
    /// for.
    pub async fn claim(
        &self,
        host: &str,
        among: &[String],
        n: usize,
        ttl: Duration,
    ) -> Result<Vec<Claimed>, StateError> {
        let (host, among) = (host.to_owned(), among.to_vec());
        self.run(|pool| async move {
            let mut client = pool.get().await.map_err(failed)?;
            let tx = client.transaction().await.map_err(pg)?;
            let free = tx
                .query(
                    "SELECT pipeline FROM freshet.leases
                     WHERE pipeline = ANY($1) AND (owner IS NULL OR lease_until < now())
                     ORDER BY random() LIMIT $2 FOR UPDATE SKIP LOCKED",
                    &[&among, &(n as i64)],
                )
                .await
                .map_err(pg)?;
            let free: Vec<String> = free.into_iter().map(|r| r.get(0)).collect();
            if free.is_empty() {
                return Ok(Vec::new());
            }
            // The history's instants are the statements' own
            // (`clock_timestamp()`), not the transaction's start (`now()`):
            // a release that committed after this transaction began, and
            // before it locked the row, ended before this claim.
            tx.execute(
                "UPDATE freshet.lease_history SET ended_at = clock_timestamp(), ended = 'expired'
                 WHERE pipeline = ANY($1) AND ended_at IS NULL",
                &[&free],
            )
            .await
            .map_err(pg)?;
            let rows = tx
                .query(
                    "UPDATE freshet.leases
                     SET owner = $1, epoch = epoch + 1,
                         lease_until = now() + make_interval(secs => $3), claimed_at = now()
                     WHERE pipeline = ANY($2) RETURNING pipeline, epoch",
                    &[&host, &free, &seconds(ttl)],
                )
                .await
                .map_err(pg)?;
            let won = claimed(rows);
            for c in &won {
                tx.execute(
                    "INSERT INTO freshet.lease_history (pipeline, epoch, owner, claimed_at)
                     VALUES ($1, $2, $3, clock_timestamp())",
                    &[&c.pipeline, &c.epoch, &host],
                )
                .await
                .map_err(pg)?;
            }
            tx.commit().await.map_err(pg)?;
            Ok(won)
        })
        .await
    }

    /// Gives back a lease, if `host` still holds it at that epoch (one it
    /// lost stays the new owner's).
    pub async fn release(&self, host: &str, lease: &Claimed) -> Result<bool, StateError> {
        let (host, lease) = (host.to_owned(), lease.clone());
        self.run(|pool| async move {
            let mut client = pool.get().await.map_err(failed)?;
            let tx = client.transaction().await.map_err(pg)?;
            let released = tx
                .execute(
                    "UPDATE freshet.leases SET owner = NULL, lease_until = '-infinity'
                     WHERE pipeline = $1 AND owner = $2 AND epoch = $3",
                    &[&lease.pipeline, &host, &lease.epoch],
                )
                .await
                .map_err(pg)?;
            if released == 1 {
                tx.execute(
                    "UPDATE freshet.lease_history SET ended_at = clock_timestamp(), ended = 'released'
                     WHERE pipeline = $1 AND epoch = $2 AND ended_at IS NULL",
                    &[&lease.pipeline, &lease.epoch],
                )
                .await
                .map_err(pg)?;
            }
            tx.commit().await.map_err(pg)?;
            Ok(released == 1)
        })
        .await
    }

    /// Says `host` has left (its share goes to the others at once).
    pub async fn leave(&self, host: &str) -> Result<(), StateError> {
        let host = host.to_owned();
        self.run(|pool| async move {
            let client = pool.get().await.map_err(failed)?;
            client
                .execute("DELETE FROM freshet.hosts WHERE host = $1", &[&host])
                .await
                .map_err(pg)?;
            Ok(())
        })
        .await
    }
}
