//! `[pipelines.NAME.deliver]`: where a pipeline's events go.

use super::tagged;
use crate::deliver::auth::OAuthSettings;
use crate::secrets::SecretEnv;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// `[pipelines.NAME.deliver]`.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum DeliverConfig {
    /// AEP streaming ingestion, batch endpoint.
    Aep(AepConfig),
    /// Exact envelopes as NDJSON lines in a file (quickstart, dry runs).
    File(FileSinkConfig),
}

/// AEP streaming ingestion settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
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
    pub token_env: Option<SecretEnv>,
    /// Adobe IMS server-to-server credentials: a token is fetched, cached
    /// and renewed (instead of a fixed `token_env`).
    pub ims: Option<OAuthConfig>,
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

/// OAuth 2.0 client credentials, from the environment: AEP's
/// `deliver.ims` (Adobe IMS server-to-server) and a CRM target's `oauth`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OAuthConfig {
    /// The token endpoint (for AEP, IMS's by default).
    pub token_url: Option<String>,
    /// Environment variable holding the client id.
    pub client_id_env: SecretEnv,
    /// Environment variable holding the client secret.
    pub client_secret_env: SecretEnv,
    /// Scopes to ask for (for AEP, IMS's streaming scopes by default).
    pub scope: Option<String>,
}

/// IMS's token endpoint and the scopes streaming ingestion needs: what
/// `deliver.ims` uses unless it says otherwise.
pub const IMS_DEFAULTS: (&str, &str) = (
    "https://ims-na1.adobelogin.com/ims/token/v3",
    crate::deliver::auth::DEFAULT_SCOPE,
);

impl OAuthConfig {
    /// The settings the token provider is built from, with `defaults`
    /// (token endpoint, scope) for what the config leaves out.
    pub fn settings<'a>(&'a self, defaults: (&'a str, &'a str)) -> OAuthSettings<'a> {
        OAuthSettings {
            token_url: self.token_url.as_deref().unwrap_or(defaults.0),
            client_id: &self.client_id_env,
            client_secret: &self.client_secret_env,
            scope: self.scope.as_deref().unwrap_or(defaults.1),
        }
    }
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
#[derive(Debug, Clone, Deserialize, Serialize)]
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
