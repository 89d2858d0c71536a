//! The SQLite side of plugin versions: what tenants uploaded, and each
//! pipeline's stack of switches (schema 3).

use super::{PluginPin, PluginVersion};
use rusqlite::{params, Connection};

pub(super) fn add(conn: &Connection, v: &PluginVersion) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO plugin_versions (tenant, digest, size, contract, uploaded_ms)
         VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING",
        params![v.tenant, v.digest, v.size as i64, v.contract, v.uploaded_ms],
    )?;
    Ok(())
}

pub(super) fn list(conn: &Connection, tenant: &str) -> rusqlite::Result<Vec<PluginVersion>> {
    let mut stmt = conn.prepare(
        "SELECT tenant, digest, size, contract, uploaded_ms FROM plugin_versions
         WHERE tenant = ?1 ORDER BY uploaded_ms, digest",
    )?;
    let rows = stmt.query_map([tenant], |r| {
        Ok(PluginVersion {
            tenant: r.get(0)?,
            digest: r.get(1)?,
            size: r.get::<_, i64>(2)? as u64,
            contract: r.get(3)?,
            uploaded_ms: r.get(4)?,
        })
    })?;
    rows.collect()
}

pub(super) fn pin(
    conn: &Connection,
    pipeline: &str,
    digest: Option<&str>,
    now_ms: i64,
) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO plugin_pins (pipeline, digest, set_ms) VALUES (?1, ?2, ?3)",
        params![pipeline, digest, now_ms],
    )?;
    Ok(())
}

pub(super) fn pop(conn: &Connection, pipeline: &str) -> rusqlite::Result<()> {
    conn.execute(
        "DELETE FROM plugin_pins WHERE id = (SELECT max(id) FROM plugin_pins WHERE pipeline = ?1)",
        [pipeline],
    )?;
    Ok(())
}

pub(super) fn pins(conn: &Connection, pipeline: &str) -> rusqlite::Result<Vec<PluginPin>> {
    let mut stmt = conn
        .prepare("SELECT digest, set_ms FROM plugin_pins WHERE pipeline = ?1 ORDER BY id DESC")?;
    let rows = stmt.query_map([pipeline], |r| {
        Ok(PluginPin {
            digest: r.get(0)?,
            set_ms: r.get(1)?,
        })
    })?;
    rows.collect()
}
