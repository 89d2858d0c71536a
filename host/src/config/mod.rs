//! The configuration file: its shape, parsing and validation.
//!
//! Three phases, each with errors that name the key they are about:
//! 1. [`parse`]: TOML into these types; an unknown key or a wrong type stops
//!    here with its key path (`pipelines.orders.source.tabel: unknown field`).
//! 2. [`Config::validate`]: pure checks across fields, collecting *every*
//!    problem at once (see [`validate`]).
//! 3. Building (in [`crate::pipeline`]): the I/O checks — files, tables,
//!    columns, environment variables — still naming the key.

mod tagged;
mod tenants;
pub(crate) mod validate;

use crate::plugin::{EngineSettings, Grants, Limits};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use tenants::{check_plugin_dir, TenantConfig, DEFAULT_TENANT};
pub use validate::ConfigError;

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The wasmtime engine shared by every pipeline.
    #[serde(default)]
    pub engine: EngineSettings,
    /// Where offsets, the action ledger and dead letters live.
    pub state: StateConfig,
    /// The customers whose pipelines this host runs, by name.
    #[serde(default)]
    pub tenants: BTreeMap<String, TenantConfig>,
    /// The pipelines, by name.
    pub pipelines: BTreeMap<String, PipelineConfig>,
}

/// `[state]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// The SQLite database file.
    pub path: PathBuf,
}

/// `[pipelines.NAME]`: one table, one plugin, one destination.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// The tenant owning the pipeline (`[tenants.NAME]`); required once any
    /// tenant is declared.
    pub tenant: Option<String>,
    /// The plugin component (`.wasm`). Replacing the file swaps the running
    /// plugin (see `engine.reload_interval_ms`).
    pub plugin: PathBuf,
    /// Read-only settings the plugin reads with `get-setting`. Never secrets.
    #[serde(default)]
    pub plugin_settings: BTreeMap<String, String>,
    /// Rows per call into the plugin.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Sandbox limits.
    #[serde(default)]
    pub limits: Limits,
    /// Ambient capabilities granted to the plugin (none by default).
    #[serde(default)]
    pub grants: Grants,
    /// Where rows come from.
    pub source: SourceConfig,
    /// Where events go.
    pub deliver: DeliverConfig,
    /// Action targets by the name plugins use.
    #[serde(default)]
    pub targets: BTreeMap<String, TargetConfig>,
}

fn default_batch_size() -> usize {
    500
}

/// `[pipelines.NAME.source]`.
#[derive(Debug, Clone)]
pub enum SourceConfig {
    /// A table in an SQLite database file.
    Sqlite(SqliteSourceConfig),
    /// A Snowflake table.
    Snowflake(Box<SnowflakeSourceConfig>),
}

/// What every source polled by timestamp has, whatever its kind.
#[derive(Debug, Clone, Copy)]
pub struct Polling<'a> {
    /// The table.
    pub table: &'a str,
    /// The column that, with the timestamp, orders rows and breaks ties.
    pub key_column: &'a str,
    /// The timestamp column and where reading starts.
    pub timestamp: &'a TimestampConfig,
    /// Rows per page query.
    pub page_size: usize,
    /// Wait after a poll that found nothing new, in milliseconds.
    pub poll_interval_ms: u64,
    /// The delay window, in milliseconds.
    pub delay_ms: u64,
    /// Read the whole table on first start.
    pub backfill: bool,
}

impl SourceConfig {
    /// The polling settings every kind shares.
    pub fn polling(&self) -> Polling<'_> {
        match self {
            SourceConfig::Sqlite(s) => Polling {
                table: &s.table,
                key_column: &s.key_column,
                timestamp: &s.timestamp,
                page_size: s.page_size,
                poll_interval_ms: s.poll_interval_ms,
                delay_ms: s.delay_ms,
                backfill: s.backfill,
            },
            SourceConfig::Snowflake(s) => Polling {
                table: &s.table,
                key_column: &s.key_column,
                timestamp: &s.timestamp,
                page_size: s.page_size,
                poll_interval_ms: s.poll_interval_ms,
                delay_ms: s.delay_ms,
                backfill: s.backfill,
            },
        }
    }
}

/// An SQLite table polled by timestamp.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqliteSourceConfig {
    /// The database file.
    pub path: PathBuf,
    /// The table.
    pub table: String,
    /// The column that, with the timestamp, orders rows and breaks ties.
    pub key_column: String,
    /// The timestamp column and where reading starts.
    pub timestamp: TimestampConfig,
    /// Rows per page query.
    #[serde(default = "default_page_size")]
    pub page_size: usize,
    /// Wait after a poll that found nothing new, in milliseconds.
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
    /// Rows newer than `now - delay_ms` are left for a later poll, so a
    /// transaction that commits late with an earlier timestamp is still read.
    #[serde(default)]
    pub delay_ms: u64,
    /// `true`: read the whole table (`timestamp.initial = 0`); `false`: only
    /// rows newer than the first start (`timestamp.initial = -1`). Ignored
    /// when `timestamp.initial` is set.
    #[serde(default)]
    pub backfill: bool,
}

fn default_page_size() -> usize {
    1000
}

fn default_poll_interval_ms() -> u64 {
    1000
}

/// A Snowflake table polled by timestamp, through `snowflake-connector-rs`.
/// Identifiers are plain (unquoted) Snowflake identifiers, so they match
/// case-insensitively as in any worksheet.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnowflakeSourceConfig {
    /// The account identifier (`orgname-account` or a locator).
    pub account: String,
    /// The user.
    pub user: String,
    /// The role (else the user's default role).
    pub role: Option<String>,
    /// The warehouse page queries run on.
    pub warehouse: String,
    /// The database.
    pub database: String,
    /// The schema.
    pub schema: String,
    /// The table.
    pub table: String,
    /// The column that, with the timestamp, orders rows and breaks ties.
    pub key_column: String,
    /// The timestamp column (`TIMESTAMP_NTZ` or `TIMESTAMP_LTZ`, NOT NULL)
    /// and where reading starts.
    pub timestamp: TimestampConfig,
    /// The IANA zone a `TIMESTAMP_NTZ` column's wall-clock times are in.
    #[serde(default = "default_timezone")]
    pub timezone: String,
    /// How the user signs in; secrets come from the environment or files.
    pub auth: SnowflakeAuthConfig,
    /// Rows per page query.
    #[serde(default = "default_snowflake_page_size")]
    pub page_size: usize,
    /// Wait after a poll that found nothing new, in milliseconds (the
    /// vendor's connector: 10 s).
    #[serde(default = "default_snowflake_poll_interval_ms")]
    pub poll_interval_ms: u64,
    /// Rows newer than Snowflake's `CURRENT_TIMESTAMP - delay_ms` wait for a
    /// later poll (late commits with earlier timestamps are still read).
    #[serde(default)]
    pub delay_ms: u64,
    /// `true`: read the whole table on first start; `false`: only new rows.
    #[serde(default)]
    pub backfill: bool,
    /// An idle table is only asked "anything new?" (no warehouse); the page
    /// query runs anyway once this long has passed without one, in
    /// milliseconds.
    #[serde(default = "default_max_staleness_ms")]
    pub max_staleness_ms: u64,
    /// Per-query time limit, in milliseconds.
    #[serde(default = "default_query_timeout_ms")]
    pub query_timeout_ms: u64,
    /// Another base URL than `https://{account}.snowflakecomputing.com`
    /// (PrivateLink, or a local emulator in tests).
    pub endpoint: Option<String>,
}

fn default_timezone() -> String {
    "UTC".to_owned()
}
fn default_snowflake_page_size() -> usize {
    10_000
}
fn default_snowflake_poll_interval_ms() -> u64 {
    10_000
}
fn default_max_staleness_ms() -> u64 {
    3_600_000
}
fn default_query_timeout_ms() -> u64 {
    120_000
}

/// `[pipelines.NAME.source.auth]`: a password, or a key pair (PKCS#8 PEM,
/// optionally encrypted). Never the secret itself.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnowflakeAuthConfig {
    /// Environment variable holding the password.
    pub password_env: Option<String>,
    /// A PKCS#8 PEM file holding the private key.
    pub private_key_file: Option<PathBuf>,
    /// Environment variable holding the PKCS#8 PEM private key.
    pub private_key_env: Option<String>,
    /// Environment variable holding the private key's passphrase.
    pub passphrase_env: Option<String>,
}

/// `[pipelines.NAME.source.timestamp]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimestampConfig {
    /// The column: NOT NULL, set on insert and on every update.
    pub column: String,
    /// How an INTEGER column stores instants: `s`, `ms` (the default) or
    /// `us` since the epoch. Only for the sqlite source.
    pub unit: Option<TimestampUnit>,
    /// The first cursor: `0` (everything), `-1` (from first start), epoch
    /// seconds, or an RFC 3339 instant. Rows *at* this instant are read.
    pub initial: Option<InitialTimestamp>,
}

/// Units of an integer timestamp column.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TimestampUnit {
    /// Seconds since the epoch.
    S,
    /// Milliseconds since the epoch.
    #[default]
    Ms,
    /// Microseconds since the epoch.
    Us,
}

/// `timestamp.initial` as written: a number or a string.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum InitialTimestamp {
    /// Epoch seconds; `-1` means "now, at first start".
    EpochSeconds(i64),
    /// An RFC 3339 instant.
    Rfc3339(String),
}

/// `[pipelines.NAME.deliver]`.
#[derive(Debug, Clone)]
pub enum DeliverConfig {
    /// AEP streaming ingestion, batch endpoint.
    Aep(AepConfig),
    /// Exact envelopes as NDJSON lines in a file (quickstart, dry runs).
    File(FileSinkConfig),
}

/// AEP streaming ingestion settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AepConfig {
    /// `https://dcs.adobedc.net`, or a loopback receiver in tests.
    #[serde(default = "default_aep_url")]
    pub base_url: String,
    /// The streaming connection (inlet) id.
    pub connection_id: String,
    /// `{ORG}@AdobeOrg`.
    pub ims_org: String,
    /// The target dataset.
    pub dataset_id: String,
    /// The dataflow id (header `flowId` and `x-adobe-flow-id`).
    pub flow_id: Option<String>,
    /// The XDM schema `$id`, e.g. `https://ns.adobe.com/acme/schemas/123`.
    pub schema_id: String,
    /// `header.source.name`.
    #[serde(default = "default_source_name")]
    pub source_name: String,
    /// Environment variable holding a bearer token, for authenticated inlets.
    pub token_env: Option<String>,
    /// Adobe IMS server-to-server credentials: a token is fetched, cached
    /// and renewed (instead of a fixed `token_env`).
    pub ims: Option<ImsConfig>,
    /// Largest request body in bytes (AEP refuses more than 1 MB).
    #[serde(default = "default_max_request_bytes")]
    pub max_request_bytes: usize,
    /// Requests in flight at once.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Per-request timeout in milliseconds.
    #[serde(default = "default_request_timeout_ms")]
    pub timeout_ms: u64,
    /// Send each message alone to the single-message endpoint with
    /// `syncValidation=true`: AEP checks it against the schema and answers
    /// the violations (60 requests a minute: for trying, not for volume).
    #[serde(default)]
    pub sync_validation: bool,
}

/// `[pipelines.NAME.deliver.ims]`: OAuth client credentials, from the environment.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImsConfig {
    /// The token endpoint.
    #[serde(default = "default_ims_url")]
    pub token_url: String,
    /// Environment variable holding the client id.
    pub client_id_env: String,
    /// Environment variable holding the client secret.
    pub client_secret_env: String,
    /// Scopes to ask for.
    #[serde(default = "default_ims_scope")]
    pub scope: String,
}

fn default_ims_url() -> String {
    "https://ims-na1.adobelogin.com/ims/token/v3".to_owned()
}
fn default_ims_scope() -> String {
    crate::deliver::auth::DEFAULT_SCOPE.to_owned()
}

fn default_aep_url() -> String {
    "https://dcs.adobedc.net".to_owned()
}
fn default_source_name() -> String {
    "freshet".to_owned()
}
fn default_max_request_bytes() -> usize {
    1_000_000
}
fn default_concurrency() -> usize {
    4
}
fn default_request_timeout_ms() -> u64 {
    30_000
}

/// The file sink.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSinkConfig {
    /// The NDJSON file envelopes are appended to.
    pub path: PathBuf,
    /// Envelope fields, as AEP would get them.
    pub ims_org: String,
    /// The target dataset.
    pub dataset_id: String,
    /// The XDM schema `$id`.
    pub schema_id: String,
    /// `header.source.name`.
    #[serde(default = "default_source_name")]
    pub source_name: String,
}

/// `[pipelines.NAME.targets.TARGET]`: where a named action goes.
#[derive(Debug, Clone)]
pub enum TargetConfig {
    /// An HTTP call.
    Webhook(WebhookTargetConfig),
    /// E-mail over SMTP, from the operator's templates.
    Email(EmailTargetConfig),
    /// A CRM upsert by external id.
    Crm(CrmTargetConfig),
    /// Appends each action request as a JSON line to a file: the quickstart's
    /// stand-in for targets that are not wired to a real system yet.
    Record(RecordTargetConfig),
}

/// A webhook target.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookTargetConfig {
    /// The URL.
    pub url: String,
    /// `POST`, `PUT` or `GET`.
    #[serde(default = "default_method")]
    pub method: String,
    /// Extra headers; `${VAR}` in a value is replaced by that environment
    /// variable when the pipeline starts (secrets stay out of the file).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The whole call's time window, retries included, in milliseconds (1–30 s).
    #[serde(default = "default_webhook_timeout_ms")]
    pub timeout_ms: u64,
    /// Retries within the window (at most 3), never on 401, 403 or 404.
    #[serde(default = "default_retries")]
    pub max_retries: u32,
    /// Environment variable holding the secret that signs each call
    /// (`x-freshet-signature`, HMAC-SHA256 over `{timestamp}.{body}`).
    pub signing_secret_env: Option<String>,
    /// Journey-action capping: calls over it are refused (`capped`).
    pub capping: Option<CappingConfig>,
}

/// `[...targets.TARGET.capping]`, as journey actions define it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CappingConfig {
    /// Calls allowed per period; more are refused with outcome `capped`.
    pub max_calls: u64,
    /// The period, in milliseconds.
    pub period_ms: u64,
    /// Calls in flight at once (1–400); more wait their turn.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
}

fn default_max_connections() -> usize {
    400
}

fn default_method() -> String {
    "POST".to_owned()
}
fn default_webhook_timeout_ms() -> u64 {
    30_000
}
fn default_retries() -> u32 {
    3
}

impl TargetConfig {
    /// The target's cap, if it has one (record targets have none).
    pub fn capping(&self) -> Option<&CappingConfig> {
        match self {
            TargetConfig::Webhook(w) => w.capping.as_ref(),
            TargetConfig::Email(m) => m.capping.as_ref(),
            TargetConfig::Crm(c) => c.capping.as_ref(),
            TargetConfig::Record(_) => None,
        }
    }
}

/// An e-mail target: an SMTP server, a sender, and the templates plugins
/// name. The host renders them with the plugin's variables (MiniJinja
/// syntax, `{{ name }}`; a variable the template uses but the plugin did
/// not give fails the action, it is never sent half-filled).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailTargetConfig {
    /// The SMTP server.
    pub host: String,
    /// Its port; by default 587 with STARTTLS, 465 with TLS, 25 without.
    pub port: Option<u16>,
    /// `starttls` (default), `tls` (implicit TLS), or `none` (plain text:
    /// only for a relay on this machine).
    #[serde(default)]
    pub tls: SmtpTls,
    /// A PEM file of CA certificates to trust besides the public roots (a
    /// company relay with its own CA).
    pub ca_file: Option<PathBuf>,
    /// Environment variable holding the SMTP user name (with `password_env`).
    pub username_env: Option<String>,
    /// Environment variable holding the SMTP password.
    pub password_env: Option<String>,
    /// The sender, e.g. `Shop <orders@example.com>`.
    pub from: String,
    /// The whole send's time window, retries included, in milliseconds.
    #[serde(default = "default_webhook_timeout_ms")]
    pub timeout_ms: u64,
    /// Retries within the window on a temporary failure (4xx, network).
    #[serde(default = "default_retries")]
    pub max_retries: u32,
    /// The templates, by the name plugins give.
    pub templates: BTreeMap<String, EmailTemplateConfig>,
    /// Calls per period and in flight; over it a send is refused (`capped`).
    pub capping: Option<CappingConfig>,
}

/// How an SMTP connection is secured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// Plain connection upgraded with STARTTLS (required).
    #[default]
    Starttls,
    /// TLS from the first byte.
    Tls,
    /// No encryption.
    None,
}

/// One e-mail template.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailTemplateConfig {
    /// The subject line.
    pub subject: String,
    /// The plain-text body.
    pub text: String,
    /// An HTML alternative (variables are HTML-escaped in it).
    pub html: Option<String>,
}

/// A CRM target: contacts (or any object) upserted by external id.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrmTargetConfig {
    /// `salesforce`: `PATCH {base_url}/services/data/{api_version}/sobjects/{object}/{id_field}/{id}`;
    /// `hubspot`: `POST {base_url}/crm/v3/objects/{object}/batch/upsert`.
    pub flavor: CrmFlavor,
    /// The instance URL (`https://acme.my.salesforce.com`, `https://api.hubapi.com`).
    pub base_url: String,
    /// The external-id field (Salesforce, e.g. `External_Id__c`) or the
    /// unique property (HubSpot `idProperty`, e.g. `email`).
    pub id_field: String,
    /// Salesforce's REST API version.
    #[serde(default = "default_salesforce_api")]
    pub api_version: String,
    /// OAuth client credentials; the token is cached and renewed like AEP's.
    pub oauth: Option<OAuthConfig>,
    /// Or an environment variable holding a fixed bearer token.
    pub token_env: Option<String>,
    /// The whole call's time window, retries included, in milliseconds (1–30 s).
    #[serde(default = "default_webhook_timeout_ms")]
    pub timeout_ms: u64,
    /// Retries within the window (at most 3), never on 403 or 404.
    #[serde(default = "default_retries")]
    pub max_retries: u32,
    /// Calls per period and in flight; over it a call is refused (`capped`).
    pub capping: Option<CappingConfig>,
}

fn default_salesforce_api() -> String {
    "v61.0".to_owned()
}

/// Which CRM API a target speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CrmFlavor {
    /// Salesforce sObject upsert by external id.
    Salesforce,
    /// HubSpot CRM v3 batch upsert.
    Hubspot,
}

/// OAuth 2.0 client credentials, from the environment.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuthConfig {
    /// The token endpoint.
    pub token_url: String,
    /// Environment variable holding the client id.
    pub client_id_env: String,
    /// Environment variable holding the client secret.
    pub client_secret_env: String,
    /// Scopes to ask for, if the server wants them.
    #[serde(default)]
    pub scope: String,
}

/// A record target.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordTargetConfig {
    /// The NDJSON file.
    pub path: PathBuf,
}

/// Why a config file could not be used: every problem found, each with its
/// key path.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML of this shape.
    #[error("{0}")]
    Parse(ConfigError),
    /// The values do not fit together.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<ConfigError>),
}

/// Parses TOML text; an unknown key or a wrong type names its key path.
pub fn parse(text: &str) -> Result<Config, ConfigError> {
    // A syntax error has no key path yet: its line and column say where.
    let deserializer = toml::Deserializer::parse(text)
        .map_err(|e| ConfigError::new("", e.to_string().trim_end().to_owned()))?;
    serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let (path, message) = tagged::split_message(&e.path().to_string(), e.inner().message());
        ConfigError::new(path, message)
    })
}

/// Reads, parses and validates a config file. Relative paths inside it are
/// taken from the file's own folder.
pub fn load(path: &Path) -> Result<Config, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut config = parse(&text).map_err(LoadError::Parse)?;
    let errors = config.validate();
    if !errors.is_empty() {
        return Err(LoadError::Invalid(errors));
    }
    config.resolve_paths(path.parent().unwrap_or(Path::new(".")));
    Ok(config)
}

/// [`load`], its failure worded for a person: every problem, under the
/// file's name.
pub fn load_explained(path: &Path) -> anyhow::Result<Config> {
    load(path).map_err(|e| match e {
        LoadError::Read { .. } => anyhow::anyhow!("{e}"),
        _ => anyhow::anyhow!("{} is not valid:\n{e}", path.display()),
    })
}

impl Config {
    /// Makes every relative path in the config relative to `base`.
    pub fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.state.path);
        if let Some(dir) = &mut self.engine.cache_dir {
            fix(dir);
        }
        for tenant in self.tenants.values_mut() {
            if let Some(dir) = &mut tenant.plugin_dir {
                fix(dir);
            }
        }
        for pipeline in self.pipelines.values_mut() {
            fix(&mut pipeline.plugin);
            match &mut pipeline.source {
                SourceConfig::Sqlite(s) => fix(&mut s.path),
                SourceConfig::Snowflake(s) => {
                    if let Some(file) = &mut s.auth.private_key_file {
                        fix(file);
                    }
                }
            }
            if let DeliverConfig::File(f) = &mut pipeline.deliver {
                fix(&mut f.path);
            }
            for target in pipeline.targets.values_mut() {
                match target {
                    TargetConfig::Record(r) => fix(&mut r.path),
                    TargetConfig::Email(m) => {
                        if let Some(ca) = &mut m.ca_file {
                            fix(ca);
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

impl<'de> Deserialize<'de> for SourceConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (kind, rest) = tagged::split(d)?;
        match kind.as_str() {
            "sqlite" => tagged::variant(rest).map(Self::Sqlite),
            "snowflake" => tagged::variant(rest).map(|s| Self::Snowflake(Box::new(s))),
            other => Err(tagged::unknown(other, &["sqlite", "snowflake"])),
        }
    }
}

impl<'de> Deserialize<'de> for DeliverConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (kind, rest) = tagged::split(d)?;
        match kind.as_str() {
            "aep" => tagged::variant(rest).map(Self::Aep),
            "file" => tagged::variant(rest).map(Self::File),
            other => Err(tagged::unknown(other, &["aep", "file"])),
        }
    }
}

impl<'de> Deserialize<'de> for TargetConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (kind, rest) = tagged::split(d)?;
        match kind.as_str() {
            "webhook" => tagged::variant(rest).map(Self::Webhook),
            "email" => tagged::variant(rest).map(Self::Email),
            "crm" => tagged::variant(rest).map(Self::Crm),
            "record" => tagged::variant(rest).map(Self::Record),
            other => Err(tagged::unknown(
                other,
                &["webhook", "email", "crm", "record"],
            )),
        }
    }
}
