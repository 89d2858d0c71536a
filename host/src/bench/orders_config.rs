//! The config of one `orders` pipeline over the sample table, rendered as
//! TOML text: what `freshet bench` runs, and what the integration tests
//! start from. Going through the text keeps parsing and validation in the
//! path, exactly as a user's file takes it.

use std::fmt::Write as _;
use std::path::PathBuf;

/// An `orders` pipeline: SQLite source, the orders plugin, AEP delivery.
#[derive(Debug, Clone)]
pub struct OrdersPipeline {
    /// The pipeline's name (`orders`); tables written for `orders` (as
    /// [`record_target`] writes them) are renamed to it.
    pub name: String,
    /// The owning tenant, if any.
    pub tenant: Option<String>,
    /// More lines for `[engine]`.
    pub engine: String,
    /// More lines for `[pipelines.NAME]` (`grants = {...}`, ...).
    pub extra: String,
    /// The compiled-component cache.
    pub cache_dir: PathBuf,
    /// The state file.
    pub state: PathBuf,
    /// Instead of the state file: a PostgreSQL store shared by hosts.
    pub shared_state: Option<SharedState>,
    /// The plugin component.
    pub plugin: PathBuf,
    /// Where `orders` lives.
    pub source: OrdersSource,
    /// The AEP (or loopback receiver) base URL.
    pub aep_url: String,
    /// `source.key_column` (`id`).
    pub key_column: String,
    /// Rows per page.
    pub page_size: usize,
    /// Rows per plugin call.
    pub batch_size: usize,
    /// Wait after an empty poll.
    pub poll_interval_ms: u64,
    /// The delay window.
    pub delay_ms: u64,
    /// `source.backfill`.
    pub backfill: bool,
    /// `source.timestamp.initial` as a TOML value (`-1`, `"2025-01-01T00:00:00Z"`).
    pub initial: Option<String>,
    /// Lines of `[pipelines.orders.limits]`.
    pub limits: String,
    /// `[pipelines.orders.targets.*]` tables (see [`record_target`], [`webhook_target`]).
    pub targets: String,
}

/// A PostgreSQL state store, as `[state]` names it.
#[derive(Debug, Clone)]
pub struct SharedState {
    /// `state.url_env`.
    pub url_env: String,
    /// `state.lease_ttl_ms`.
    pub lease_ttl_ms: u64,
}

/// Where the `orders` table lives.
#[derive(Debug, Clone)]
pub enum OrdersSource {
    /// An SQLite file (timestamps in epoch milliseconds).
    Sqlite(PathBuf),
    /// A Snowflake table `ORDERS` (timestamps `TIMESTAMP_NTZ`).
    Snowflake(SnowflakeOrders),
    /// A PostgreSQL table `orders`.
    Postgres(PostgresOrders),
}

/// Where a PostgreSQL `orders` table is.
#[derive(Debug, Clone)]
pub struct PostgresOrders {
    /// `source.url_env`: the variable holding the connection string.
    pub url_env: String,
    /// `source.schema`.
    pub schema: String,
    /// `source.timezone`, for a `timestamp` (without time zone) column.
    pub timezone: String,
}

/// Where a Snowflake `ORDERS` table is and how to sign in.
#[derive(Debug, Clone)]
pub struct SnowflakeOrders {
    /// `source.endpoint`: the base URL (an emulator on loopback).
    pub endpoint: String,
    /// The database; the schema is `PUBLIC`.
    pub database: String,
    /// `source.timezone` for the NTZ timestamps.
    pub timezone: String,
    /// `source.max_staleness_ms`.
    pub max_staleness_ms: u64,
    /// `source.auth` as an inline table's content.
    pub auth: String,
}

impl SnowflakeOrders {
    /// The `ORDERS` table of `database` at `endpoint`, UTC, password from
    /// `FRESHET_SNOWFLAKE_PASSWORD`.
    pub fn new(endpoint: &str, database: &str) -> Self {
        Self {
            endpoint: endpoint.to_owned(),
            database: database.to_owned(),
            timezone: "UTC".into(),
            max_staleness_ms: 3_600_000,
            auth: r#"password_env = "FRESHET_SNOWFLAKE_PASSWORD""#.into(),
        }
    }
}

/// A target that records actions to `path`.
pub fn record_target(name: &str, path: &std::path::Path) -> String {
    format!("[pipelines.orders.targets.{name}]\nkind = \"record\"\npath = {path:?}\n\n")
}

/// A webhook target; `headers` is a TOML inline table's content.
pub fn webhook_target(name: &str, url: &str, headers: &str) -> String {
    format!(
        "[pipelines.orders.targets.{name}]\nkind = \"webhook\"\nurl = {url:?}\ntimeout_ms = 5000\nheaders = {{ {headers} }}\n\n"
    )
}

impl OrdersPipeline {
    /// Defaults for everything but the paths and the AEP URL.
    pub fn new(
        dir: &std::path::Path,
        plugin: PathBuf,
        source: OrdersSource,
        aep_url: String,
    ) -> Self {
        Self {
            name: "orders".into(),
            tenant: None,
            engine: String::new(),
            extra: String::new(),
            cache_dir: dir.join("cache"),
            state: dir.join("state.db"),
            shared_state: None,
            plugin,
            source,
            aep_url,
            key_column: "id".into(),
            page_size: 1000,
            batch_size: 500,
            poll_interval_ms: 100,
            delay_ms: 0,
            backfill: true,
            initial: None,
            limits: String::new(),
            targets: String::new(),
        }
    }

    /// The `[pipelines.orders.source]` lines that depend on its kind.
    fn source_lines(&self) -> (String, &'static str) {
        match &self.source {
            OrdersSource::Sqlite(db) => (
                format!("kind = \"sqlite\"\npath = {db:?}"),
                ", unit = \"ms\"",
            ),
            OrdersSource::Snowflake(s) => (
                format!(
                    "kind = \"snowflake\"\nendpoint = {endpoint:?}\naccount = \"test\"\nuser = \"freshet\"\n\
                     warehouse = \"XS\"\ndatabase = {database:?}\nschema = \"PUBLIC\"\ntimezone = {zone:?}\n\
                     max_staleness_ms = {staleness}\nauth = {{ {auth} }}",
                    endpoint = s.endpoint,
                    database = s.database,
                    zone = s.timezone,
                    staleness = s.max_staleness_ms,
                    auth = s.auth,
                ),
                "",
            ),
            OrdersSource::Postgres(p) => (
                format!(
                    "kind = \"postgres\"\nurl_env = {url_env:?}\nschema = {schema:?}\ntimezone = {zone:?}",
                    url_env = p.url_env,
                    schema = p.schema,
                    zone = p.timezone
                ),
                "",
            ),
        }
    }

    /// The whole file: `[engine]`, `[state]` and the pipeline.
    pub fn render(&self) -> String {
        format!("{}{}", self.render_head(), self.render_pipeline())
    }

    /// The `[engine]` and `[state]` tables.
    pub fn render_head(&self) -> String {
        let state = match &self.shared_state {
            None => format!("path = {:?}", self.state),
            Some(s) => format!(
                "kind = \"postgres\"\nurl_env = {:?}\nlease_ttl_ms = {}",
                s.url_env, s.lease_ttl_ms
            ),
        };
        format!(
            "[engine]\ncache_dir = {cache:?}\n{engine}\n\n[state]\n{state}\n\n",
            cache = self.cache_dir,
            engine = self.engine,
        )
    }

    /// The `[pipelines.NAME]` tables alone, to combine several pipelines in
    /// one file.
    pub fn render_pipeline(&self) -> String {
        let (source, unit) = self.source_lines();
        let mut timestamp = format!("column = \"updated_at\"{unit}");
        if let Some(initial) = &self.initial {
            let _ = write!(timestamp, ", initial = {initial}");
        }
        let tenant = self
            .tenant
            .as_ref()
            .map(|t| format!("tenant = {t:?}\n"))
            .unwrap_or_default();
        let text = format!(
            r#"[pipelines.orders]
{tenant}plugin = {plugin:?}
batch_size = {batch}
plugin_settings = {{ tenant = "acme" }}
{extra}

[pipelines.orders.limits]
{limits}

[pipelines.orders.source]
{source}
table = "orders"
key_column = {key:?}
page_size = {page}
poll_interval_ms = {poll}
delay_ms = {delay}
backfill = {backfill}
timestamp = {{ {timestamp} }}

[pipelines.orders.deliver]
kind = "aep"
base_url = {aep:?}
connection_id = "conn-1"
ims_org = "TEST@AdobeOrg"
dataset_id = "ds-1"
flow_id = "flow-1"
schema_id = "https://ns.adobe.com/acme/schemas/orders"
timeout_ms = 5000

{targets}"#,
            plugin = self.plugin,
            extra = self.extra,
            batch = self.batch_size,
            limits = self.limits,
            key = self.key_column,
            page = self.page_size,
            poll = self.poll_interval_ms,
            delay = self.delay_ms,
            backfill = self.backfill,
            aep = self.aep_url,
            targets = self.targets,
        );
        text.replace("[pipelines.orders.", &format!("[pipelines.{}.", self.name))
            .replace("[pipelines.orders]", &format!("[pipelines.{}]", self.name))
    }
}
