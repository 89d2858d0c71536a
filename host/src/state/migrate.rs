//! Migrations of the SQLite state file between schema versions, run by
//! [`super::sqlite::SqliteState::open`] inside one transaction each.

use rusqlite::{params, Connection};

/// Schema 1 to 2: the ledger is clustered by key; dead letters' payloads
/// were untyped JSON whose shape said what they were; they become [`super::Letter`]s, and the ledger entries of
/// dead-lettered actions, once `finished` like done ones, become `failed`
/// (so `dlq replay` runs them again). An `event` letter with an
/// envelope (`header`) was refused by AEP (no actions were kept with it then);
/// one without was an event the plugin could not decide on.
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
