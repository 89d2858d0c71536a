//! Migrations of the SQLite state file between schema versions, run by
//! [`super::sqlite::SqliteState::open`] inside one transaction each.

use rusqlite::{params, Connection};

/// Schema 1 to 2: the ledger is clustered by key; dead letters' payloads
/// were untyped JSON whose shape said what they were, and become
/// [`super::Letter`]s: an `event` letter with an envelope (`header`) was
/// refused by AEP (no actions were kept with it then), one without was an
/// event the plugin could not decide on. The ledger entries of dead-lettered
/// actions, `finished` like done ones in schema 1, become `failed` (so
/// `dlq replay` runs them again).
pub(super) fn to_v2(conn: &mut Connection) -> Result<(), String> {
    use serde_json::{json, Value};
    let tx = conn.transaction().map_err(|e| e.to_string())?;
    // The ledger becomes clustered by key (the schema creates `ledger` so
    // only where it did not exist: here it did, as a rowid table).
    tx.execute_batch(
        "CREATE TABLE ledger_v2 (
            idempotency_key TEXT PRIMARY KEY, pipeline TEXT NOT NULL, state TEXT NOT NULL,
            outcome TEXT, updated_ms INTEGER NOT NULL
         ) WITHOUT ROWID;
         INSERT INTO ledger_v2 SELECT idempotency_key, pipeline, state, outcome, updated_ms FROM ledger;
         DROP TABLE ledger;
         ALTER TABLE ledger_v2 RENAME TO ledger;",
    )
    .map_err(|e| e.to_string())?;
    let old: Vec<(i64, String, String)> = {
        let mut stmt = tx
            .prepare("SELECT id, kind, payload FROM dead_letters")
            .map_err(|e| e.to_string())?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .map_err(|e| e.to_string())?;
        rows.collect::<Result<_, _>>().map_err(|e| e.to_string())?
    };
    for (id, kind, payload) in old {
        let v: Value = serde_json::from_str(&payload).unwrap_or(Value::String(payload));
        let (kind, new) = match kind.as_str() {
            "row" => ("row", json!({ "row": v })),
            "event" if v.get("header").is_some() => {
                ("refused", json!({ "envelope": v, "actions": [] }))
            }
            "event" => {
                let body = match &v["body"] {
                    Value::String(s) => serde_json::from_str(s).unwrap_or(json!(s)),
                    other => other.clone(),
                };
                let event = json!({"_id": v["id"], "timestamp": v["timestamp"], "body": body});
                ("undecided", json!({ "event": event }))
            }
            _ => (
                "action",
                json!({"key": v["idempotency_key"], "action": v["action"]}),
            ),
        };
        tx.execute(
            "UPDATE dead_letters SET kind = ?1, payload = ?2 WHERE id = ?3",
            params![kind, new.to_string(), id],
        )
        .map_err(|e| e.to_string())?;
        if kind == "action" {
            tx.execute(
                "UPDATE ledger SET state = 'failed' WHERE idempotency_key = ?1",
                params![new["key"].as_str()],
            )
            .map_err(|e| e.to_string())?;
        }
    }
    tx.commit().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use crate::state::sqlite::SqliteState;
    use crate::state::{DeadKind, Finished, Letter, StateStore as _};
    use rusqlite::Connection;

    /// A state file as schema 1 wrote it, with a dead letter of each shape.
    const V1: &str = r#"
CREATE TABLE offsets (pipeline TEXT PRIMARY KEY, ts_nanos INTEGER NOT NULL, key_json TEXT, updated_ms INTEGER NOT NULL);
CREATE TABLE ledger (idempotency_key TEXT PRIMARY KEY, pipeline TEXT NOT NULL, state TEXT NOT NULL, outcome TEXT, updated_ms INTEGER NOT NULL);
CREATE TABLE dead_letters (id INTEGER PRIMARY KEY, pipeline TEXT NOT NULL, kind TEXT NOT NULL, identity TEXT NOT NULL, code TEXT NOT NULL, reason TEXT NOT NULL, payload TEXT NOT NULL, created_ms INTEGER NOT NULL);
INSERT INTO offsets VALUES ('p', 5, NULL, 1);
INSERT INTO ledger VALUES ('p/r3/0', 'p', 'finished', 'http_404', 1), ('p/r4/0', 'p', 'finished', 'http_200', 1);
INSERT INTO dead_letters VALUES
 (1, 'p', 'row', 'r1', 'reject', 'no', '{"identity":"r1","cells":{"id":1}}', 1),
 (2, 'p', 'event', 'r2', 'http_400', 'schema', '{"header":{"a":1},"body":{"xdmEntity":{"_id":"e2"}}}', 1),
 (3, 'p', 'event', 'r5', 'reject', 'no', '{"id":"e5","timestamp":"2026-01-01T00:00:00Z","body":{"k":1}}', 1),
 (4, 'p', 'action', 'r3', 'http_404', 'gone', '{"idempotency_key":"p/r3/0","action":{"kind":"webhook","target":"hook","body":{"n":1}}}', 1);
PRAGMA user_version = 1;
"#;

    #[test]
    fn a_schema_1_file_is_migrated_and_nothing_is_lost() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        Connection::open(&path).unwrap().execute_batch(V1).unwrap();
        let state = SqliteState::open(&path).unwrap();
        let letters = state.dead_letters(None).unwrap();
        let kinds: Vec<_> = letters.iter().map(|d| (d.id, d.kind())).collect();
        assert_eq!(
            kinds,
            [
                (1, DeadKind::Row),
                (2, DeadKind::Refused),
                (3, DeadKind::Undecided),
                (4, DeadKind::Action)
            ]
        );
        let Letter::Refused(refused) = &letters[1].letter else {
            panic!()
        };
        assert_eq!(
            refused.envelope.get(),
            r#"{"body":{"xdmEntity":{"_id":"e2"}},"header":{"a":1}}"#
        );
        assert!(refused.actions.is_empty(), "schema 1 kept none");
        let Letter::Undecided(undecided) = &letters[2].letter else {
            panic!()
        };
        assert_eq!(
            (undecided.event.id.as_str(), undecided.event.body.get()),
            ("e5", r#"{"k":1}"#)
        );
        let Letter::Action(action) = &letters[3].letter else {
            panic!()
        };
        assert_eq!(action.key, "p/r3/0");
        // The dead-lettered action is `failed` now, so `dlq replay` runs it;
        // the one that happened stays done.
        let finished = state
            .finished_actions(&["p/r3/0".into(), "p/r4/0".into()])
            .unwrap();
        assert_eq!(finished["p/r3/0"], Finished::Failed);
        assert_eq!(finished["p/r4/0"], Finished::Done);
        assert!(state.offset("p").unwrap().is_some(), "offsets untouched");
        // Opening again changes nothing.
        drop(state);
        let again = SqliteState::open(&path).unwrap();
        assert_eq!(again.dead_letters(None).unwrap(), letters);
    }
}
