//! The connection to Snowflake: the client built from config and secrets,
//! one session logged in lazily and again when it expires, and the mapping
//! of Snowflake's failures to "fix the config" or "try again".

use crate::config::SnowflakeSourceConfig;
use crate::secrets::{SecretError, Secrets};
use crate::source::SourceError;
use snowflake_connector_rs::{
    AuthConfig, Client, ClientConfig, DynamicRow, EndpointConfig, ErrorKind, IntoStatement,
    KeyPairConfig, QueryConfig, Session, SessionConfig,
};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;

/// Snowflake's codes for a session that must log in again (expired token,
/// unknown token after a server restart).
const SESSION_GONE: &[&str] = &["390104", "390111", "390112", "390114"];
/// "Object does not exist or not authorized".
pub(super) const NO_SUCH_OBJECT: &str = "002003";
/// "No active warehouse selected in the current session".
const NO_WAREHOUSE: &str = "000606";
/// "Insufficient privileges to operate on ...".
const NO_PRIVILEGE: &str = "003001";

/// A Snowflake client and its current session.
pub(super) struct Connection {
    client: Client,
    session: Mutex<Option<Arc<Session>>>,
    /// The source's config key, for errors.
    prefix: String,
}

impl Connection {
    /// Builds the client: reads the secrets the config names, through the
    /// tenant's `secrets`. Does not connect yet.
    pub(super) fn new(
        config: &SnowflakeSourceConfig,
        prefix: &str,
        secrets: &Secrets,
    ) -> Result<Self, SourceError> {
        let bad = |key: &str, message: String| SourceError::Config {
            key: format!("{prefix}.{key}"),
            message,
        };
        let read = |r: Result<String, SecretError>| {
            r.map_err(|e| SourceError::Config {
                key: e.key,
                message: e.message,
            })
        };
        let key = |k: &str| format!("{prefix}.auth.{k}");
        let a = &config.auth;
        let auth = if let Some(var) = &a.password_env {
            AuthConfig::password(read(secrets.env(var, &key("password_env")))?)
        } else {
            let pem = match (&a.private_key_file, &a.private_key_env) {
                (Some(file), _) => read(secrets.file(file, &key("private_key_file")))?,
                (None, Some(var)) => read(secrets.env(var, &key("private_key_env")))?,
                (None, None) => {
                    return Err(bad(
                        "auth",
                        "set one of password_env, private_key_file or private_key_env".into(),
                    ))
                }
            };
            let key = match &a.passphrase_env {
                Some(var) => KeyPairConfig::from_encrypted_pem(
                    pem,
                    read(secrets.env(var, &key("passphrase_env")))?.into_bytes(),
                ),
                None => KeyPairConfig::from_pem(pem),
            };
            AuthConfig::key_pair(key)
        };
        let mut session = SessionConfig::new()
            .with_warehouse(&config.warehouse)
            .with_database(&config.database)
            .with_schema(&config.schema)
            // Every session timestamp in UTC; NTZ zones are applied here.
            .with_session_parameter("TIMEZONE", serde_json::json!("UTC"));
        if let Some(role) = &config.role {
            session = session.with_role(role);
        }
        let mut client_config = ClientConfig::new(&config.user, &config.account, auth)
            .with_session(session)
            .with_query(
                QueryConfig::new()
                    .with_query_response_timeout(Duration::from_millis(config.query_timeout_ms)),
            );
        if let Some(endpoint) = &config.endpoint {
            let url = endpoint
                .value()
                .map_err(|e| bad("endpoint", format!("{:?}: {e}", endpoint.text())))?;
            client_config =
                client_config.with_endpoint(EndpointConfig::custom_base_url(url.clone()));
        }
        let client = Client::new(client_config).map_err(|e| bad("endpoint", e.to_string()))?;
        Ok(Self {
            client,
            session: Mutex::new(None),
            prefix: prefix.to_owned(),
        })
    }

    /// Runs a statement and collects every row (all chunks, in order). A
    /// session that expired (or a server that forgot it) is replaced once.
    pub(super) async fn query<S: IntoStatement + Clone>(
        &self,
        statement: &S,
    ) -> Result<Vec<DynamicRow>, snowflake_connector_rs::Error> {
        let mut relogged = false;
        loop {
            let session = self.session().await?;
            let result = match session.query(statement.clone()).await {
                Ok(cursor) => cursor.collect::<Vec<DynamicRow>>().await,
                Err(e) => Err(e),
            };
            match result {
                Err(e) if !relogged && session_gone(&e) => {
                    tracing::info!(error = %e, "Snowflake session ended; logging in again");
                    *self.session.lock().await = None;
                    relogged = true;
                }
                other => return other,
            }
        }
    }

    async fn session(&self) -> Result<Arc<Session>, snowflake_connector_rs::Error> {
        let mut slot = self.session.lock().await;
        if let Some(session) = &*slot {
            return Ok(Arc::clone(session));
        }
        let session = Arc::new(self.client.create_session().await?);
        *slot = Some(Arc::clone(&session));
        Ok(session)
    }

    /// Maps a Snowflake failure: the ones the config must fix name their
    /// key; the rest are worth retrying.
    pub(super) fn error(&self, e: &snowflake_connector_rs::Error) -> SourceError {
        let code = e.snowflake_code().unwrap_or_default();
        let config = |key: &str, advice: &str| SourceError::Config {
            key: format!("{}.{key}", self.prefix),
            message: format!("{e}{advice}"),
        };
        match (e.kind(), code) {
            (_, NO_SUCH_OBJECT) => config("table", " (check database, schema, table and that the role has USAGE on them and SELECT on the table)"),
            (_, NO_WAREHOUSE) => config("warehouse", " (the role needs USAGE and OPERATE on the warehouse)"),
            (_, NO_PRIVILEGE) => config("role", " (grants: warehouse USAGE+OPERATE, database and schema USAGE, table SELECT)"),
            // Login refused, or a key that does not parse; the network's
            // failures are `Network`/`Timeout` and retried.
            (ErrorKind::Auth, _) => config("auth", ""),
            (ErrorKind::Config, _) => config("endpoint", ""),
            _ => SourceError::Transient(format!("Snowflake: {e}")),
        }
    }
}

fn session_gone(e: &snowflake_connector_rs::Error) -> bool {
    e.is_session_expired() || SESSION_GONE.contains(&e.snowflake_code().unwrap_or_default())
}
