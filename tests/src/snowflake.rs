//! Snowflake fixtures: one emulator per test binary (each test in a database
//! of its own) and an `ORDERS` table in it that the orders pipeline reads.

use crate::{Order, OrdersSource, Setup, SnowflakeOrders};
use chrono::TimeZone as _;
use freshet::bench::seed::Sql;
use freshet_peers::emulator::Emulator;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

pub use freshet_peers::emulator;

/// Rows per result chunk in the shared emulator: small, so a page of 100
/// rows arrives in 4 parts and the client's multi-chunk path always runs.
pub const CHUNK_ROWS: usize = 30;

/// The `ORDERS` table, as a customer would declare it.
pub use freshet::bench::sample::SNOWFLAKE_ORDERS_TABLE as ORDERS_TABLE;

/// The emulator shared by this test binary's tests.
pub fn shared() -> &'static Emulator {
    static SHARED: OnceLock<Emulator> = OnceLock::new();
    SHARED.get_or_init(|| {
        let dir = tempfile::tempdir().expect("emulator dir").keep();
        Emulator::start(&dir, CHUNK_ROWS).expect("start the Snowflake emulator")
    })
}

/// A database name no other test uses.
pub fn unique_database() -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "T{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A [`Setup`] whose pipeline reads `ORDERS` from the emulator.
pub struct SnowflakeSetup {
    /// The folder, state and pipeline settings.
    pub setup: Setup,
    /// A session on the test's database.
    pub sql: Sql,
    /// The test's database (schema `PUBLIC`).
    pub database: String,
    /// The zone `UPDATED_AT` wall times are in.
    pub zone: chrono_tz::Tz,
}

impl SnowflakeSetup {
    /// A new database on `emulator` with an empty `ORDERS` table (created by
    /// `table_sql`), read in `zone`, running `plugin`.
    pub async fn new(emulator: &Emulator, plugin: &str, table_sql: &str, zone: &str) -> Self {
        std::env::set_var("FRESHET_SNOWFLAKE_PASSWORD", "test-password");
        let database = unique_database();
        let sql = Sql::connect(&emulator.url(), &database)
            .await
            .expect("emulator session");
        sql.exec(table_sql).await.expect("create ORDERS");
        let mut setup = Setup::new(plugin);
        let mut source = SnowflakeOrders::new(&emulator.url(), &database);
        source.timezone = zone.to_owned();
        setup.pipeline.source = OrdersSource::Snowflake(source);
        Self {
            setup,
            sql,
            database,
            zone: zone.parse().expect("a zone"),
        }
    }

    /// The orders table on the shared emulator, UTC.
    pub async fn orders(plugin: &str) -> Self {
        Self::new(shared(), plugin, ORDERS_TABLE, "UTC").await
    }

    /// Inserts orders in one statement; `updated_at` (epoch ms) is written
    /// as the wall time in the setup's zone, as an application there would.
    pub async fn insert(&self, orders: &[Order]) {
        for chunk in orders.chunks(1000) {
            let values = chunk
                .iter()
                .map(|o| {
                    format!(
                        "({}, '{}', '{}', {}, '{}', '{}')",
                        o.id,
                        o.email,
                        o.status,
                        o.amount,
                        o.currency,
                        self.wall(o.updated_at)
                    )
                })
                .collect::<Vec<_>>()
                .join(", ");
            self.sql
                .exec(&format!("INSERT INTO ORDERS VALUES {values}"))
                .await
                .expect("insert orders");
        }
    }

    /// Epoch milliseconds as an NTZ literal in the setup's zone.
    pub fn wall(&self, ms: i64) -> String {
        self.zone
            .timestamp_millis_opt(ms)
            .single()
            .expect("an instant")
            .naive_local()
            .format("%Y-%m-%d %H:%M:%S%.3f")
            .to_string()
    }
}
