//! The PostgreSQL schema, as numbered migrations applied at start-up.
//!
//! Every table lives in the `freshet` schema, so the store can share a
//! database with the tables it reads. Hosts starting together apply the
//! migrations once: each host takes a transaction-scoped advisory lock
//! first, and the version table says what is left.

use tokio_postgres::Client;

/// The lock key (an arbitrary constant: "freshet" in ASCII) every host takes
/// before migrating.
const MIGRATION_LOCK: i64 = 0x66_72_65_73_68_65_74;

/// Each migration's SQL, in order; its version is its index plus one. Add,
/// never edit: a database records which ones it has.
const MIGRATIONS: &[&str] = &[
    // 1: what the SQLite store keeps (see `state::sqlite`), plus leases.
    "
    CREATE TABLE freshet.offsets (
        pipeline   text PRIMARY KEY,
        ts_nanos   bigint NOT NULL,
        key_json   text,               -- NULL: before every row at ts_nanos
        updated_ms bigint NOT NULL
    );
    CREATE TABLE freshet.ledger (
        idempotency_key text PRIMARY KEY,  -- pipeline/identity/_id/index
        pipeline        text NOT NULL,
        state           text NOT NULL,     -- started | finished | failed
        outcome         text,
        updated_ms      bigint NOT NULL
    );
    CREATE TABLE freshet.dead_letters (
        id         bigserial PRIMARY KEY,
        pipeline   text NOT NULL,
        kind       text NOT NULL,          -- row | undecided | refused | action
        identity   text NOT NULL,
        code       text NOT NULL,
        reason     text NOT NULL,
        payload    text NOT NULL,          -- the kind's fields, JSON
        created_ms bigint NOT NULL
    );
    CREATE INDEX dead_letters_pipeline ON freshet.dead_letters (pipeline, id);
    CREATE TABLE freshet.plugin_versions (
        tenant      text NOT NULL,
        digest      text NOT NULL,
        size        bigint NOT NULL,
        contract    text NOT NULL,
        uploaded_ms bigint NOT NULL,
        PRIMARY KEY (tenant, digest)
    );
    CREATE TABLE freshet.plugin_pins (
        id       bigserial PRIMARY KEY,
        pipeline text NOT NULL,
        digest   text,                     -- NULL: the config's plugin file
        set_ms   bigint NOT NULL
    );
    CREATE INDEX plugin_pins_pipeline ON freshet.plugin_pins (pipeline, id);
    -- One row per pipeline: who may act for it, until when (the database's
    -- clock), and the epoch every claim bumps and every commit checks.
    CREATE TABLE freshet.leases (
        pipeline    text PRIMARY KEY,
        owner       text,
        epoch       bigint NOT NULL DEFAULT 0,
        lease_until timestamptz NOT NULL DEFAULT '-infinity',
        claimed_at  timestamptz
    );
    -- Every claim, and how it ended: the record that no two hosts held a
    -- pipeline at once.
    CREATE TABLE freshet.lease_history (
        id         bigserial PRIMARY KEY,
        pipeline   text NOT NULL,
        epoch      bigint NOT NULL,
        owner      text NOT NULL,
        claimed_at timestamptz NOT NULL,
        ended_at   timestamptz,
        ended      text                    -- released | expired
    );
    CREATE INDEX lease_history_pipeline ON freshet.lease_history (pipeline, epoch);
    -- The hosts alive, for each one's fair share.
    CREATE TABLE freshet.hosts (
        host       text PRIMARY KEY,
        seen_until timestamptz NOT NULL,
        started_at timestamptz NOT NULL DEFAULT now()
    );
    ",
];

/// The newest schema version this code knows.
pub(super) const VERSION: i64 = MIGRATIONS.len() as i64;

/// Applies the migrations the database lacks; refuses a database migrated
/// by a newer freshet.
pub(super) async fn migrate(client: &mut Client) -> Result<(), String> {
    let tx = client.transaction().await.map_err(|e| e.to_string())?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(|e| format!("waiting for the migration lock: {e}"))?;
    tx.batch_execute(
        "CREATE SCHEMA IF NOT EXISTS freshet;
         CREATE TABLE IF NOT EXISTS freshet.migrations (
             version    bigint PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now()
         );",
    )
    .await
    .map_err(|e| format!("creating schema freshet: {e}"))?;
    let row = tx
        .query_one(
            "SELECT coalesce(max(version), 0) FROM freshet.migrations",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?;
    let have: i64 = row.get(0);
    if have > VERSION {
        return Err(format!(
            "the database has schema version {have}, newer than this freshet's {VERSION}"
        ));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(have as usize) {
        let version = i as i64 + 1;
        tx.batch_execute(sql)
            .await
            .map_err(|e| format!("migration {version}: {e}"))?;
        tx.execute(
            "INSERT INTO freshet.migrations (version) VALUES ($1)",
            &[&version],
        )
        .await
        .map_err(|e| e.to_string())?;
        tracing::info!(version, "state database migrated");
    }
    tx.commit().await.map_err(|e| e.to_string())
}
