//! The embedded state store: one SQLite file in WAL mode with
//! `synchronous = FULL`, so a commit that returned survives a crash.

use super::{
    cursor_from, key_json, now_ms, Commit, DeadLetter, Finished, Letter, PluginPin, PluginVersion,
    Settled, StateError, StateStore, StoredOffset,
};
use crate::source::Cursor;
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Mutex;

/// The schema version this code writes; older files are migrated on open
/// (see [`migrate`]).
const SCHEMA_VERSION: i64 = 3;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS offsets (
    pipeline   TEXT PRIMARY KEY,
    ts_nanos   INTEGER NOT NULL,
    key_json   TEXT,               -- NULL: before every row at ts_nanos
    updated_ms INTEGER NOT NULL
);
-- Clustered by key (WITHOUT ROWID): one B-tree written per action, not a
-- table and an index.
CREATE TABLE IF NOT EXISTS ledger (
    idempotency_key TEXT PRIMARY KEY,  -- pipeline/identity/_id/index
    pipeline        TEXT NOT NULL,
    state           TEXT NOT NULL,     -- started | finished | failed
    outcome         TEXT,
    updated_ms      INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dead_letters (
    id         INTEGER PRIMARY KEY,
    pipeline   TEXT NOT NULL,
    kind       TEXT NOT NULL,      -- row | undecided | refused | action
    identity   TEXT NOT NULL,
    code       TEXT NOT NULL,
    reason     TEXT NOT NULL,
    payload    TEXT NOT NULL,      -- the kind's fields, JSON (state::Letter)
    created_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_letters_pipeline ON dead_letters (pipeline, id);
-- Schema 3: plugin versions tenants uploaded through the admin API, and
-- which one each pipeline was pointed at (a stack per pipeline: a switch
-- pushes, a rollback pops).
CREATE TABLE IF NOT EXISTS plugin_versions (
    tenant      TEXT NOT NULL,
    digest      TEXT NOT NULL,     -- SHA-256 of the component, hex
    size        INTEGER NOT NULL,
    contract    TEXT NOT NULL,
    uploaded_ms INTEGER NOT NULL,
    PRIMARY KEY (tenant, digest)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS plugin_pins (
    id       INTEGER PRIMARY KEY,
    pipeline TEXT NOT NULL,
    digest   TEXT,                 -- NULL: the config's plugin file
    set_ms   INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS plugin_pins_pipeline ON plugin_pins (pipeline, id);
";

/// Keys per ledger statement: one statement per chunk instead of per key,
/// well under SQLite's limit on bound parameters.
const CHUNK: usize = 400;

/// `?first, ?first+1, ...`: `n` numbered placeholders.
fn numbered(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("?{i}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// State in an SQLite file.
pub struct SqliteState {
    conn: Mutex<Connection>,
}

fn err(e: impl std::fmt::Display) -> StateError {
    StateError::Failed(e.to_string())
}

impl SqliteState {
    /// Opens (creating if needed) the state file.
    pub fn open(path: &Path) -> Result<Self, StateError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StateError::Failed(format!("creating {}: {e}", dir.display())))?;
        }
        let mut conn = Connection::open(path)
            .map_err(|e| StateError::Failed(format!("opening {}: {e}", path.display())))?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(err)?;
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(err)?;
        if version > SCHEMA_VERSION {
            return Err(StateError::Failed(format!(
                "{} has schema version {version}, newer than this freshet's {SCHEMA_VERSION}",
                path.display()
            )));
        }
        conn.execute_batch(SCHEMA).map_err(err)?;
        if version == 1 {
            super::migrate::to_v2(&mut conn).map_err(|e| {
                StateError::Failed(format!("migrating {} to schema 2: {e}", path.display()))
            })?;
        }
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(err)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> Result<std::sync::MutexGuard<'_, Connection>, StateError> {
        self.conn
            .lock()
            .map_err(|_| StateError::Failed("state connection lock poisoned".into()))
    }

    /// Marks `keys` started unless finished, in one transaction; returns
    /// the finished ones (see [`StateStore::start_actions`]).
    fn mark_started(
        conn: &mut Connection,
        pipeline: &str,
        keys: &[String],
        rerun_failed: bool,
    ) -> Result<HashMap<String, Finished>, StateError> {
        let tx = conn.transaction().map_err(err)?;
        let now = now_ms();
        let mut finished = HashMap::new();
        for chunk in keys.chunks(CHUNK) {
            // ?1 pipeline, ?2 now, then one key each. A page's keys are
            // usually all new, and then this one statement is the lookup
            // and the mark: one B-tree probe per key, not two.
            let values = (0..chunk.len())
                .map(|i| format!("(?{}, ?1, 'started', ?2)", i + 3))
                .collect::<Vec<_>>()
                .join(",");
            let sql = format!(
                "INSERT INTO ledger (idempotency_key, pipeline, state, updated_ms) VALUES {values}
                 ON CONFLICT (idempotency_key) DO NOTHING"
            );
            let mut params: Vec<&dyn rusqlite::ToSql> = vec![&pipeline, &now];
            params.extend(chunk.iter().map(|k| k as &dyn rusqlite::ToSql));
            let inserted = tx
                .prepare_cached(&sql)
                .map_err(err)?
                .execute(params.as_slice())
                .map_err(err)?;
            if inserted == chunk.len() {
                continue;
            }
            // Some were there: finished, failed, or started by a run that
            // never committed (which runs again, marked anew).
            let mut again = Vec::new();
            for (key, how) in lookup(&tx, chunk)? {
                match how {
                    Some(Finished::Failed) if rerun_failed => again.push(key),
                    Some(how) => {
                        finished.insert(key, how);
                    }
                    None => again.push(key),
                }
            }
            let mut mark = tx
                .prepare_cached(
                    "UPDATE ledger SET state = 'started', updated_ms = ?2 WHERE idempotency_key = ?1",
                )
                .map_err(err)?;
            for key in &again {
                mark.execute(params![key, now]).map_err(err)?;
            }
        }
        tx.commit().map_err(err)?;
        Ok(finished)
    }
}

/// The ledger's rows among `keys` (at most [`CHUNK`]): each key with how it
/// finished, or `None` while it is only `started`.
fn lookup(
    conn: &Connection,
    keys: &[String],
) -> Result<Vec<(String, Option<Finished>)>, StateError> {
    let sql = format!(
        "SELECT idempotency_key, state FROM ledger WHERE idempotency_key IN ({})",
        numbered(1, keys.len())
    );
    let mut stmt = conn.prepare_cached(&sql).map_err(err)?;
    let rows = stmt
        .query_map(rusqlite::params_from_iter(keys), |r| {
            let state: String = r.get(1)?;
            let how = match state.as_str() {
                "finished" => Some(Finished::Done),
                "failed" => Some(Finished::Failed),
                _ => None,
            };
            Ok((r.get::<_, String>(0)?, how))
        })
        .map_err(err)?;
    rows.collect::<Result<_, _>>().map_err(err)
}

impl StateStore for SqliteState {
    fn offset(&self, pipeline: &str) -> Result<Option<Cursor>, StateError> {
        let conn = self.conn()?;
        let row: Option<(i64, Option<String>)> = conn
            .query_row(
                "SELECT ts_nanos, key_json FROM offsets WHERE pipeline = ?1",
                [pipeline],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(err)?;
        row.map(|(ts, key)| cursor_from(ts, key)).transpose()
    }

    fn init_offset(&self, pipeline: &str, cursor: &Cursor) -> Result<Cursor, StateError> {
        {
            let conn = self.conn()?;
            conn.execute(
                "INSERT INTO offsets (pipeline, ts_nanos, key_json, updated_ms) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (pipeline) DO NOTHING",
                params![pipeline, cursor.ts.0, key_json(cursor)?, now_ms()],
            )
            .map_err(err)?;
        }
        self.offset(pipeline)?
            .ok_or_else(|| StateError::Failed("offset vanished after insert".into()))
    }

    fn reset_offset(&self, pipeline: &str, cursor: Option<&Cursor>) -> Result<(), StateError> {
        let conn = self.conn()?;
        match cursor {
            None => conn.execute("DELETE FROM offsets WHERE pipeline = ?1", [pipeline]).map_err(err)?,
            Some(c) => conn
                .execute(
                    "INSERT INTO offsets (pipeline, ts_nanos, key_json, updated_ms) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (pipeline) DO UPDATE SET ts_nanos = ?2, key_json = ?3, updated_ms = ?4",
                    params![pipeline, c.ts.0, key_json(c)?, now_ms()],
                )
                .map_err(err)?,
        };
        Ok(())
    }

    fn offsets(&self) -> Result<Vec<StoredOffset>, StateError> {
        let conn = self.conn()?;
        let mut stmt = conn
            .prepare(
                "SELECT pipeline, ts_nanos, key_json, updated_ms FROM offsets ORDER BY pipeline",
            )
            .map_err(err)?;
        let rows = stmt
            .query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .map_err(err)?;
        let mut out = Vec::new();
        for row in rows {
            let (pipeline, ts, key, updated_ms) = row.map_err(err)?;
            out.push(StoredOffset {
                pipeline,
                cursor: cursor_from(ts, key)?,
                updated_ms,
            });
        }
        Ok(out)
    }

    fn finished_actions(&self, keys: &[String]) -> Result<HashMap<String, Finished>, StateError> {
        let conn = self.conn()?;
        let mut finished = HashMap::new();
        for chunk in keys.chunks(CHUNK) {
            for (key, how) in lookup(&conn, chunk)? {
                if let Some(how) = how {
                    finished.insert(key, how);
                }
            }
        }
        Ok(finished)
    }

    fn start_actions(
        &self,
        pipeline: &str,
        keys: &[String],
        rerun_failed: bool,
    ) -> Result<HashMap<String, Finished>, StateError> {
        let mut conn = self.conn()?;
        // `started` marks tell an operator what began; they decide nothing
        // (an action not finished runs again whether marked or not). So
        // they are written without an fsync of their own: the page's commit,
        // at `synchronous = FULL`, makes them durable together with it.
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(err)?;
        let started = Self::mark_started(&mut conn, pipeline, keys, rerun_failed);
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(err)?;
        started
    }

    fn commit(&self, pipeline: &str, commit: &Commit) -> Result<(), StateError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction().map_err(err)?;
        write(&tx, pipeline, commit)?;
        tx.commit().map_err(err)
    }

    fn settle_dead_letter(
        &self,
        pipeline: &str,
        id: i64,
        result: &Settled,
    ) -> Result<(), StateError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction().map_err(err)?;
        match result {
            Settled::Done(left) => {
                tx.execute(
                    "DELETE FROM dead_letters WHERE id = ?1 AND pipeline = ?2",
                    params![id, pipeline],
                )
                .map_err(err)?;
                write(&tx, pipeline, left)?;
            }
            Settled::Failed { code, reason } => {
                tx.execute(
                    "UPDATE dead_letters SET code = ?1, reason = ?2, created_ms = ?3
                     WHERE id = ?4 AND pipeline = ?5",
                    params![code, reason, now_ms(), id, pipeline],
                )
                .map_err(err)?;
                // An action that failed again is `failed` again in the ledger
                // (its replay marked it `started`).
                tx.execute(
                    "UPDATE ledger SET state = 'failed', outcome = ?1, updated_ms = ?2
                     WHERE state = 'started' AND idempotency_key =
                     (SELECT json_extract(payload, '$.key') FROM dead_letters
                      WHERE id = ?3 AND kind = 'action')",
                    params![code, now_ms(), id],
                )
                .map_err(err)?;
            }
        }
        tx.commit().map_err(err)
    }

    fn check(&self) -> Result<(), StateError> {
        let conn = self.conn()?;
        conn.query_row("SELECT count(*) FROM offsets", [], |_| Ok(()))
            .map_err(err)
    }

    fn add_plugin_version(&self, version: &PluginVersion) -> Result<(), StateError> {
        super::versions::add(&*self.conn()?, version).map_err(err)
    }

    fn plugin_versions(&self, tenant: &str) -> Result<Vec<PluginVersion>, StateError> {
        super::versions::list(&*self.conn()?, tenant).map_err(err)
    }

    fn pin_plugin(&self, pipeline: &str, digest: Option<&str>) -> Result<(), StateError> {
        super::versions::pin(&*self.conn()?, pipeline, digest, now_ms()).map_err(err)
    }

    fn pop_plugin_pin(&self, pipeline: &str) -> Result<(), StateError> {
        super::versions::pop(&*self.conn()?, pipeline).map_err(err)
    }

    fn plugin_pins(&self, pipeline: &str) -> Result<Vec<PluginPin>, StateError> {
        super::versions::pins(&*self.conn()?, pipeline).map_err(err)
    }

    fn dead_letters(&self, pipeline: Option<&str>) -> Result<Vec<DeadLetter>, StateError> {
        let conn = self.conn()?;
        let mut stmt = conn
            .prepare(
                "SELECT id, pipeline, kind, identity, code, reason, payload, created_ms FROM dead_letters
                 WHERE ?1 IS NULL OR pipeline = ?1 ORDER BY id",
            )
            .map_err(err)?;
        let rows = stmt
            .query_map([pipeline], |r| {
                let (kind, payload): (String, String) = (r.get(2)?, r.get(6)?);
                let letter = Letter::read(&kind, &payload).map_err(|e| {
                    rusqlite::Error::FromSqlConversionFailure(
                        6,
                        rusqlite::types::Type::Text,
                        e.into(),
                    )
                })?;
                Ok(DeadLetter {
                    id: r.get(0)?,
                    pipeline: r.get(1)?,
                    identity: r.get(3)?,
                    code: r.get(4)?,
                    reason: r.get(5)?,
                    letter,
                    created_ms: r.get(7)?,
                })
            })
            .map_err(err)?;
        rows.collect::<Result<_, _>>().map_err(err)
    }
}

/// Writes a page's (or a replay's) outcomes, dead letters and offset.
fn write(
    tx: &rusqlite::Transaction<'_>,
    pipeline: &str,
    commit: &Commit,
) -> Result<(), StateError> {
    let now = now_ms();
    // Outcomes grouped by what they set, most of a page's actions sharing
    // one (`recorded`, `http_200`): an UPDATE per group and chunk of rows the
    // `started` marks created, instead of an upsert per action.
    let mut groups: BTreeMap<(bool, &str), Vec<&String>> = BTreeMap::new();
    for a in &commit.actions {
        groups.entry((a.done, &a.outcome)).or_default().push(&a.key);
    }
    for ((done, outcome), keys) in groups {
        let state = if done { "finished" } else { "failed" };
        for chunk in keys.chunks(CHUNK) {
            // ?1 state, ?2 outcome, ?3 now, then one key each.
            let sql = format!(
                "UPDATE ledger SET state = ?1, outcome = ?2, updated_ms = ?3
                 WHERE idempotency_key IN ({})",
                numbered(4, chunk.len())
            );
            let mut params: Vec<&dyn rusqlite::ToSql> = vec![&state, &outcome, &now];
            params.extend(chunk.iter().map(|k| *k as &dyn rusqlite::ToSql));
            let updated = tx
                .prepare_cached(&sql)
                .map_err(err)?
                .execute(params.as_slice())
                .map_err(err)?;
            if updated < chunk.len() {
                // A key never marked started (not through `start_actions`).
                let mut upsert = tx
                    .prepare_cached(
                        "INSERT INTO ledger (idempotency_key, pipeline, state, outcome, updated_ms)
                         VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (idempotency_key) DO NOTHING",
                    )
                    .map_err(err)?;
                for key in chunk {
                    upsert
                        .execute(params![key, pipeline, state, outcome, now])
                        .map_err(err)?;
                }
            }
        }
    }
    let mut dead = tx
        .prepare_cached(
            "INSERT INTO dead_letters (pipeline, kind, identity, code, reason, payload, created_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )
        .map_err(err)?;
    for d in &commit.dead_letters {
        dead.execute(params![
            pipeline,
            d.letter.kind().as_str(),
            d.identity,
            d.code,
            d.reason,
            d.letter.payload(),
            now
        ])
        .map_err(err)?;
    }
    if let Some(cursor) = &commit.cursor {
        tx.execute(
            "INSERT INTO offsets (pipeline, ts_nanos, key_json, updated_ms) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (pipeline) DO UPDATE SET ts_nanos = ?2, key_json = ?3, updated_ms = ?4",
            params![pipeline, cursor.ts.0, key_json(cursor)?, now],
        )
        .map_err(err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::ActionOutcome;

    fn outcome(key: &str, outcome: &str, done: bool) -> ActionOutcome {
        ActionOutcome {
            key: key.into(),
            outcome: outcome.into(),
            done,
        }
    }

    fn states(state: &SqliteState) -> Vec<(String, String, Option<String>)> {
        let conn = state.conn().unwrap();
        let mut stmt = conn
            .prepare("SELECT idempotency_key, state, outcome FROM ledger ORDER BY idempotency_key")
            .unwrap();
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap();
        rows.map(Result::unwrap).collect()
    }

    fn row(key: &str, state: &str, outcome: Option<&str>) -> (String, String, Option<String>) {
        (key.into(), state.into(), outcome.map(Into::into))
    }

    #[test]
    fn the_ledger_marks_new_keys_skips_finished_ones_and_reruns_failed_ones_only_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let state = SqliteState::open(&dir.path().join("state.db")).unwrap();
        // More keys than one statement takes, all new: nothing is finished.
        let keys: Vec<String> = (0..CHUNK + 5).map(|i| format!("p/r{i:04}/0")).collect();
        assert!(state.start_actions("p", &keys, false).unwrap().is_empty());
        assert!(states(&state)
            .iter()
            .all(|(_, s, o)| s == "started" && o.is_none()));
        // The page commits: most done alike, one failed, one done otherwise.
        let mut actions: Vec<_> = keys.iter().map(|k| outcome(k, "recorded", true)).collect();
        actions[1] = outcome(&keys[1], "http_500", false);
        actions[2] = outcome(&keys[2], "http_201", true);
        // One never marked started (a caller that skipped `start_actions`).
        actions.push(outcome("p/unmarked/0", "recorded", true));
        let commit = Commit {
            actions,
            ..Commit::default()
        };
        state.commit("p", &commit).unwrap();
        let rows = states(&state);
        assert_eq!(rows.len(), keys.len() + 1);
        assert_eq!(rows[0], row(&keys[0], "finished", Some("recorded")));
        assert_eq!(rows[1], row(&keys[1], "failed", Some("http_500")));
        assert_eq!(rows[2], row(&keys[2], "finished", Some("http_201")));
        assert_eq!(
            rows[CHUNK + 4],
            row(&keys[CHUNK + 4], "finished", Some("recorded"))
        );
        assert_eq!(
            rows[CHUNK + 5],
            row("p/unmarked/0", "finished", Some("recorded"))
        );

        // Read again, with one key the crash left only started.
        let fresh = "p/r9999/0".to_string();
        state
            .start_actions("p", std::slice::from_ref(&fresh), false)
            .unwrap();
        let again = [keys[0].clone(), keys[1].clone(), fresh.clone()];
        let finished = state.start_actions("p", &again, false).unwrap();
        assert_eq!(finished.len(), 2, "{finished:?}");
        assert_eq!(finished[&keys[0]], Finished::Done);
        assert_eq!(finished[&keys[1]], Finished::Failed);
        assert_eq!(states(&state)[1], row(&keys[1], "failed", Some("http_500")));
        // `dlq replay`: the failed one runs again, marked started; the done
        // one never does.
        let finished = state.start_actions("p", &again, true).unwrap();
        assert_eq!(finished.len(), 1, "{finished:?}");
        assert_eq!(finished[&keys[0]], Finished::Done);
        assert_eq!(
            states(&state)[1],
            row(&keys[1], "started", Some("http_500"))
        );
        assert_eq!(
            states(&state)[0],
            row(&keys[0], "finished", Some("recorded"))
        );
    }
}
