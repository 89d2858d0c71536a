//! Seeding a Snowflake (the local emulator, in the benchmark and the tests)
//! through `snowflake-connector-rs`, the driver the source itself uses.

use anyhow::Context as _;
use snowflake_connector_rs::{
    AuthConfig, Client, ClientConfig, EndpointConfig, Session, SessionConfig,
};

/// A session for seeding and changing tables.
pub struct Sql {
    session: Session,
}

impl Sql {
    /// A session at `url` on `database` (created if missing) with schema `PUBLIC`.
    pub async fn connect(url: &str, database: &str) -> anyhow::Result<Self> {
        let setup = session(url, None).await?;
        setup
            .exec(&format!("CREATE DATABASE IF NOT EXISTS {database}"))
            .await?;
        setup
            .exec(&format!("CREATE SCHEMA IF NOT EXISTS {database}.PUBLIC"))
            .await?;
        session(url, Some(database)).await
    }

    /// Runs one statement; returns the rows it answered, every cell as text.
    pub async fn exec(&self, sql: &str) -> anyhow::Result<Vec<Vec<String>>> {
        let rows = self
            .session
            .query(sql.to_owned())
            .await
            .with_context(|| sql.to_owned())?
            .collect::<Vec<snowflake_connector_rs::DynamicRow>>()
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| r.values().iter().map(|c| format!("{c:?}")).collect())
            .collect())
    }
}

async fn session(url: &str, database: Option<&str>) -> anyhow::Result<Sql> {
    let mut session = SessionConfig::new();
    if let Some(database) = database {
        session = session.with_database(database).with_schema("PUBLIC");
    }
    let config = ClientConfig::new("seed", "test", AuthConfig::password("any"))
        .with_endpoint(EndpointConfig::custom_base_url(url.parse()?))
        .with_session(session);
    let session = Client::new(config)?.create_session().await?;
    Ok(Sql { session })
}
