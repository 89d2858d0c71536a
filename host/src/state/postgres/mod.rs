//! The shared state store: PostgreSQL, through tokio-postgres and a
//! deadpool pool, for hosts that share pipelines (see [`crate::cluster`]).
//! It keeps what the SQLite store keeps, with the same transactions, and
//! the leases: each pipeline's owner and epoch, checked by every commit.
//!
//! [`StateStore`] is synchronous (SQLite's calls block and run on blocking
//! threads). This store runs its queries on a small runtime of its own, on
//! its own thread, and a call waits for its answer there; so the same calls
//! work from a blocking thread, an async task, or a CLI command, and the
//! connections live as long as the store whatever runtime called it.

mod leases;
mod schema;

pub use leases::Claimed;

use super::{
    cursor_from, key_json, now_ms, Commit, DeadLetter, Finished, LeaseRow, Letter, PluginPin,
    PluginVersion, Settled, StateError, StateStore, StoredOffset,
};
use crate::source::Cursor;
use deadpool_postgres::{GenericClient, Pool};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::time::Duration;

/// Connections per host: pipelines commit one page at a time each, and a
/// commit holds one connection for a few milliseconds.
const POOL_SIZE: usize = 8;

/// How long a call waits for a connection (or to make one) before it
/// fails, so a database that is down is an error to retry, not a hang.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// State in a PostgreSQL database.
pub struct PostgresState {
    pool: Pool,
    runtime: tokio::runtime::Handle,
    /// Dropped with the store: ends the runtime's thread.
    _stop: std::sync::mpsc::SyncSender<()>,
}

/// An error with its causes, as a state error.
fn failed(e: impl std::error::Error + 'static) -> StateError {
    StateError::Failed(crate::postgres::describe(&e))
}

/// A tokio-postgres error with its cause (the server's message).
fn pg(e: tokio_postgres::Error) -> StateError {
    failed(e)
}

impl PostgresState {
    /// Connects (`url`: a libpq connection string or URL), applies the
    /// migrations the database lacks, and returns the store.
    pub fn connect(url: &str, lease_ttl: Duration) -> Result<Self, StateError> {
        let mut target = crate::postgres::parse(url)
            .map_err(|e| StateError::Failed(format!("the connection string: {e}")))?;
        // A host frozen in the middle of a commit (SIGSTOP, a VM paused)
        // holds its lease row locked, and no other host could claim that
        // pipeline until it woke: the server ends such a session (and
        // rolls back its commit) after half a TTL.
        let idle = (lease_ttl / 2).max(Duration::from_millis(500));
        crate::postgres::set_option(
            &mut target.config,
            "idle_in_transaction_session_timeout",
            idle.as_millis(),
        );
        let (runtime, stop) = Self::start_runtime()?;
        let pool = crate::postgres::pool(target, POOL_SIZE, CONNECT_TIMEOUT)
            .map_err(StateError::Failed)?;
        let store = Self {
            pool,
            runtime,
            _stop: stop,
        };
        store.block(|pool| async move {
            let mut client = pool.get().await.map_err(failed)?;
            schema::migrate(&mut client)
                .await
                .map_err(StateError::Failed)
        })?;
        Ok(store)
    }

    /// A one-worker runtime on a thread of its own, alive until the
    /// returned sender drops.
    fn start_runtime(
    ) -> Result<(tokio::runtime::Handle, std::sync::mpsc::SyncSender<()>), StateError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("freshet-postgres")
            .enable_all()
            .build()
            .map_err(|e| StateError::Failed(format!("starting the state store's runtime: {e}")))?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = std::sync::mpsc::sync_channel::<()>(0);
        std::thread::Builder::new()
            .name("freshet-postgres-owner".into())
            .spawn(move || {
                // Returns when the store (the only sender) drops.
                let _ = stopped.recv();
                runtime.shutdown_timeout(Duration::from_secs(1));
            })
            .map_err(|e| StateError::Failed(format!("starting the state store's thread: {e}")))?;
        Ok((handle, stop))
    }

    /// Runs `work` with the pool on the store's runtime and waits for it,
    /// from any thread.
    fn block<T, F>(&self, work: impl FnOnce(Pool) -> F) -> Result<T, StateError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, StateError>> + Send + 'static,
    {
        futures::executor::block_on(self.run(work))
    }

    /// Runs `work` with the pool on the store's runtime, for async callers
    /// (the lease keeper).
    pub async fn run<T, F>(&self, work: impl FnOnce(Pool) -> F) -> Result<T, StateError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, StateError>> + Send + 'static,
    {
        self.runtime
            .spawn(work(self.pool.clone()))
            .await
            .map_err(|e| StateError::Failed(format!("state store task: {e}")))?
    }
}

/// Writes a page's (or a replay's) outcomes, dead letters and offset, in
/// `tx`; first checks the commit's fence, holding the lease row until the
/// transaction ends so no claim can slip in between.
async fn write(
    tx: &deadpool_postgres::Transaction<'_>,
    pipeline: &str,
    commit: &Commit,
) -> Result<(), StateError> {
    if let Some(fence) = &commit.fence {
        leases::check_fence(tx, pipeline, fence).await?;
    }
    let now = now_ms();
    // Outcomes grouped by what they set, as in the SQLite store: one
    // UPDATE per group.
    let mut groups: BTreeMap<(bool, &str), Vec<&str>> = BTreeMap::new();
    for a in &commit.actions {
        groups.entry((a.done, &a.outcome)).or_default().push(&a.key);
    }
    for ((done, outcome), keys) in groups {
        let state = if done { "finished" } else { "failed" };
        let updated = tx
            .execute(
                "UPDATE freshet.ledger SET state = $1, outcome = $2, updated_ms = $3
                 WHERE idempotency_key = ANY($4)",
                &[&state, &outcome, &now, &keys],
            )
            .await
            .map_err(pg)?;
        if (updated as usize) < keys.len() {
            // Keys never marked started (not through `start_actions`).
            tx.execute(
                "INSERT INTO freshet.ledger (idempotency_key, pipeline, state, outcome, updated_ms)
                 SELECT k, $2, $3, $4, $5 FROM unnest($1::text[]) AS k
                 ON CONFLICT (idempotency_key) DO NOTHING",
                &[&keys, &pipeline, &state, &outcome, &now],
            )
            .await
            .map_err(pg)?;
        }
    }
    if !commit.dead_letters.is_empty() {
        let d = &commit.dead_letters;
        let kinds: Vec<&str> = d.iter().map(|d| d.letter.kind().as_str()).collect();
        let identities: Vec<&str> = d.iter().map(|d| d.identity.as_str()).collect();
        let codes: Vec<&str> = d.iter().map(|d| d.code.as_str()).collect();
        let reasons: Vec<&str> = d.iter().map(|d| d.reason.as_str()).collect();
        let payloads: Vec<String> = d.iter().map(|d| d.letter.payload()).collect();
        // `WITH ORDINALITY` keeps the letters' order in their ids.
        tx.execute(
            "INSERT INTO freshet.dead_letters (pipeline, kind, identity, code, reason, payload, created_ms)
             SELECT $1, k, i, c, r, p, $7
             FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[])
                  WITH ORDINALITY AS d(k, i, c, r, p, n)
             ORDER BY n",
            &[&pipeline, &kinds, &identities, &codes, &reasons, &payloads, &now],
        )
        .await
        .map_err(pg)?;
    }
    if let Some(cursor) = &commit.cursor {
        tx.execute(
            "INSERT INTO freshet.offsets (pipeline, ts_nanos, key_json, updated_ms)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (pipeline) DO UPDATE SET ts_nanos = $2, key_json = $3, updated_ms = $4",
            &[&pipeline, &cursor.ts.0, &key_json(cursor)?, &now],
        )
        .await
        .map_err(pg)?;
    }
    Ok(())
}

/// How a ledger row's `state` reads: finished and how, or only started.
fn finished(state: &str) -> Option<Finished> {
    match state {
        "finished" => Some(Finished::Done),
        "failed" => Some(Finished::Failed),
        _ => None,
    }
}

impl StateStore for PostgresState {
    fn offset(&self, pipeline: &str) -> Result<Option<Cursor>, StateError> {
        let pipeline = pipeline.to_owned();
        self.block(|pool| async move {
            let client = pool.get().await.map_err(failed)?;
            let row = client
                .query_opt(
                    "SELECT ts_nanos, key_json FROM freshet.offsets WHERE pipeline = $1",
                    &[&pipeline],
                )
                .await
                .map_err(pg)?;
            row.map(|r| cursor_from(r.get(0), r.get(1))).transpose()
        })
    }

    fn init_offset(&self, pipeline: &str, cursor: &Cursor) -> Result<Cursor, StateError> {
        let (pipeline, ts, key) = (pipeline.to_owned(), cursor.ts.0, key_json(cursor)?);
        self.block(|pool| async move {
            let client = pool.get().await.map_err(failed)?;
            client
                .execute(
                    "INSERT INTO freshet.offsets (pipeline, ts_nanos, key_json, updated_ms)
                     VALUES ($1, $2, $3, $4) ON CONFLICT (pipeline) DO NOTHING",
                    &[&pipeline, &ts, &key, &now_ms()],
                )
                .await
                .map_err(pg)?;
            let row = client
                .query_one(
                    "SELECT ts_nanos, key_json FROM freshet.offsets WHERE pipeline = $1",
                    &[&pipeline],
                )
                .await
                .map_err(pg)?;
            cursor_from(row.get(0), row.get(1))
        })
    }

    fn reset_offset(&self, pipeline: &str, cursor: Option<&Cursor>) -> Result<(), StateError> {
        let pipeline = pipeline.to_owned();
        let cursor = cursor
            .map(|c| Ok::<_, StateError>((c.ts.0, key_json(c)?)))
            .transpose()?;
        self.block(|pool| async move {
            let client = pool.get().await.map_err(failed)?;
            match cursor {
                None => client
                    .execute("DELETE FROM freshet.offsets WHERE pipeline = $1", &[&pipeline])
                    .await
                    .map_err(pg)?,
                Some((ts, key)) => client
                    .execute(
                        "INSERT INTO freshet.offsets (pipeline, ts_nanos, key_json, updated_ms)
                         VALUES ($1, $2, $3, $4)
                         ON CONFLICT (pipeline) DO UPDATE SET ts_nanos = $2, key_json = $3, updated_ms = $4",
                        &[&pipeline, &ts, &key, &now_ms()],
                    )
                    .await
                    .map_err(pg)?,
            };
            Ok(())
        })
    }

    fn offsets(&self) -> Result<Vec<StoredOffset>, StateError> {
        self.block(|pool| async move {
            let client = pool.get().await.map_err(failed)?;
            let rows = client
                .query(
                    "SELECT pipeline, ts_nanos, key_json, updated_ms FROM freshet.offsets
                     ORDER BY pipeline",
                    &[],
                )
                .await
                .map_err(pg)?;
            rows.into_iter()
                .map(|r| {
                    Ok(StoredOffset {
                        pipeline: r.get(0),
                        cursor: cursor_from(r.get(1), r.get(2))?,
                        updated_ms: r.get(3),
                    })
                })
                .collect()
        })
    }

    fn finished_actions(&self, keys: &[String]) -> Result<HashMap<String, Finished>, StateError> {
        let keys = keys.to_vec();
        self.block(|pool| async move {
            let client = pool.get().await.map_err(failed)?;
            let rows = client
                .query(
                    "SELECT idempotency_key, state FROM freshet.ledger
                     WHERE idempotency_key = ANY($1)",
                    &[&keys],
                )
                .await
                .map_err(pg)?;
            Ok(rows
                .into_iter()
                .filter_map(|r| Some((r.get(0), finished(r.get(1))?)))
                .collect())
        })
    }

    fn start_actions(
        &self,
        pipeline: &str,
        keys: &[String],
        rerun_failed: bool,
    ) -> Result<HashMap<String, Finished>, StateError> {
        let (pipeline, keys) = (pipeline.to_owned(), keys.to_vec());
        self.block(|pool| async move {
            let mut client = pool.get().await.map_err(failed)?;
            let tx = client.transaction().await.map_err(pg)?;
            // `started` marks tell an operator what began; they decide
            // nothing (an action not finished runs again, marked or not).
            // So they don't wait for the WAL's flush: the page's commit
            // makes them durable together with it, as in the SQLite store.
            tx.batch_execute("SET LOCAL synchronous_commit = off")
                .await
                .map_err(pg)?;
            let now = now_ms();
            // A page's keys are usually all new: this one statement is the
            // lookup and the mark.
            let inserted = tx
                .query(
                    "INSERT INTO freshet.ledger (idempotency_key, pipeline, state, updated_ms)
                     SELECT k, $2, 'started', $3 FROM unnest($1::text[]) AS k
                     ON CONFLICT (idempotency_key) DO NOTHING RETURNING idempotency_key",
                    &[&keys, &pipeline, &now],
                )
                .await
                .map_err(pg)?;
            let mut done = HashMap::new();
            if inserted.len() < keys.len() {
                // Some were there: finished, failed, or started by a run
                // that never committed (which runs again, marked anew).
                let new: std::collections::HashSet<String> =
                    inserted.iter().map(|r| r.get(0)).collect();
                let old: Vec<&String> = keys.iter().filter(|k| !new.contains(*k)).collect();
                let rows = tx
                    .query(
                        "SELECT idempotency_key, state FROM freshet.ledger
                         WHERE idempotency_key = ANY($1)",
                        &[&old],
                    )
                    .await
                    .map_err(pg)?;
                let mut again: Vec<String> = Vec::new();
                for row in rows {
                    let key: String = row.get(0);
                    match finished(row.get(1)) {
                        Some(Finished::Failed) if rerun_failed => again.push(key),
                        Some(how) => {
                            done.insert(key, how);
                        }
                        None => again.push(key),
                    }
                }
                tx.execute(
                    "UPDATE freshet.ledger SET state = 'started', updated_ms = $2
                     WHERE idempotency_key = ANY($1)",
                    &[&again, &now],
                )
                .await
                .map_err(pg)?;
            }
            tx.commit().await.map_err(pg)?;
            Ok(done)
        })
    }

    fn commit(&self, pipeline: &str, commit: &Commit) -> Result<(), StateError> {
        let (pipeline, commit) = (pipeline.to_owned(), commit.clone());
        self.block(|pool| async move {
            let mut client = pool.get().await.map_err(failed)?;
            let tx = client.transaction().await.map_err(pg)?;
            write(&tx, &pipeline, &commit).await?;
            tx.commit().await.map_err(pg)
        })
    }

    fn dead_letters(&self, pipeline: Option<&str>) -> Result<Vec<DeadLetter>, StateError> {
        let pipeline = pipeline.map(str::to_owned);
        self.block(|pool| async move {
            let client = pool.get().await.map_err(failed)?;
            let rows = client
                .query(
                    "SELECT id, pipeline, kind, identity, code, reason, payload, created_ms
                     FROM freshet.dead_letters WHERE $1::text IS NULL OR pipeline = $1 ORDER BY id",
                    &[&pipeline],
                )
                .await
                .map_err(pg)?;
            rows.into_iter()
                .map(|r| {
                    let id: i64 = r.get(0);
                    let letter = Letter::read(r.get(2), r.get(6))
                        .map_err(|e| StateError::Failed(format!("dead letter {id}: {e}")))?;
                    Ok(DeadLetter {
                        id,
                        pipeline: r.get(1),
                        identity: r.get(3),
                        code: r.get(4),
                        reason: r.get(5),
                        letter,
                        created_ms: r.get(7),
                    })
                })
                .collect()
        })
    }

    fn settle_dead_letter(
        &self,
        pipeline: &str,
        id: i64,
        result: &Settled,
    ) -> Result<(), StateError> {
        let (pipeline, result) = (pipeline.to_owned(), result.clone());
        self.block(|pool| async move {
            let mut client = pool.get().await.map_err(failed)?;
            let tx = client.transaction().await.map_err(pg)?;
            match &result {
                Settled::Done(left) => {
                    tx.execute(
                        "DELETE FROM freshet.dead_letters WHERE id = $1 AND pipeline = $2",
                        &[&id, &pipeline],
                    )
                    .await
                    .map_err(pg)?;
                    write(&tx, &pipeline, left).await?;
                }
                Settled::Failed { code, reason } => {
                    let now = now_ms();
                    tx.execute(
                        "UPDATE freshet.dead_letters SET code = $1, reason = $2, created_ms = $3
                         WHERE id = $4 AND pipeline = $5",
                        &[code, reason, &now, &id, &pipeline],
                    )
                    .await
                    .map_err(pg)?;
                    // An action that failed again is `failed` again in the
                    // ledger (its replay marked it `started`).
                    tx.execute(
                        "UPDATE freshet.ledger SET state = 'failed', outcome = $1, updated_ms = $2
                         WHERE state = 'started' AND idempotency_key =
                         (SELECT payload::jsonb ->> 'key' FROM freshet.dead_letters
                          WHERE id = $3 AND kind = 'action')",
                        &[code, &now, &id],
                    )
                    .await
                    .map_err(pg)?;
                }
            }
            tx.commit().await.map_err(pg)
        })
    }

    fn check(&self) -> Result<(), StateError> {
        self.block(|pool| async move {
            let client = pool.get().await.map_err(failed)?;
            client
                .query_one("SELECT count(*) FROM freshet.offsets", &[])
                .await
                .map_err(pg)?;
            Ok(())
        })
    }

    fn add_plugin_version(&self, version: &PluginVersion) -> Result<(), StateError> {
        let v = version.clone();
        self.block(|pool| async move {
            let client = pool.get().await.map_err(failed)?;
            client
                .execute(
                    "INSERT INTO freshet.plugin_versions (tenant, digest, size, contract, uploaded_ms)
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                    &[&v.tenant, &v.digest, &(v.size as i64), &v.contract, &v.uploaded_ms],
                )
                .await
                .map_err(pg)?;
            Ok(())
        })
    }

    fn plugin_versions(&self, tenant: &str) -> Result<Vec<PluginVersion>, StateError> {
        let tenant = tenant.to_owned();
        self.block(|pool| async move {
            let client = pool.get().await.map_err(failed)?;
            let rows = client
                .query(
                    "SELECT tenant, digest, size, contract, uploaded_ms FROM freshet.plugin_versions
                     WHERE tenant = $1 ORDER BY uploaded_ms, digest",
                    &[&tenant],
                )
                .await
                .map_err(pg)?;
            Ok(rows
                .into_iter()
                .map(|r| PluginVersion {
                    tenant: r.get(0),
                    digest: r.get(1),
                    size: r.get::<_, i64>(2) as u64,
                    contract: r.get(3),
                    uploaded_ms: r.get(4),
                })
                .collect())
        })
    }

    fn pin_plugin(&self, pipeline: &str, digest: Option<&str>) -> Result<(), StateError> {
        let (pipeline, digest) = (pipeline.to_owned(), digest.map(str::to_owned));
        self.block(|pool| async move {
            let client = pool.get().await.map_err(failed)?;
            client
                .execute(
                    "INSERT INTO freshet.plugin_pins (pipeline, digest, set_ms) VALUES ($1, $2, $3)",
                    &[&pipeline, &digest, &now_ms()],
                )
                .await
                .map_err(pg)?;
            Ok(())
        })
    }

    fn pop_plugin_pin(&self, pipeline: &str) -> Result<(), StateError> {
        let pipeline = pipeline.to_owned();
        self.block(|pool| async move {
            let client = pool.get().await.map_err(failed)?;
            client
                .execute(
                    "DELETE FROM freshet.plugin_pins WHERE id =
                     (SELECT max(id) FROM freshet.plugin_pins WHERE pipeline = $1)",
                    &[&pipeline],
                )
                .await
                .map_err(pg)?;
            Ok(())
        })
    }

    fn plugin_pins(&self, pipeline: &str) -> Result<Vec<PluginPin>, StateError> {
        let pipeline = pipeline.to_owned();
        self.block(|pool| async move {
            let client = pool.get().await.map_err(failed)?;
            let rows = client
                .query(
                    "SELECT digest, set_ms FROM freshet.plugin_pins WHERE pipeline = $1
                     ORDER BY id DESC",
                    &[&pipeline],
                )
                .await
                .map_err(pg)?;
            Ok(rows
                .into_iter()
                .map(|r| PluginPin {
                    digest: r.get(0),
                    set_ms: r.get(1),
                })
                .collect())
        })
    }

    fn leases(&self) -> Result<Vec<LeaseRow>, StateError> {
        self.block(|pool| async move {
            let client = pool.get().await.map_err(failed)?;
            leases::all(&client).await
        })
    }
}
