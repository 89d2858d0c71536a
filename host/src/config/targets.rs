//! `[pipelines.NAME.targets.TARGET]`: the action targets plugins name,
//! with everything the sandbox never sees (URLs, servers, secrets).

use super::{tagged, OAuthConfig, Parsed};
use crate::secrets::{SecretEnv, SecretTemplate};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// `[pipelines.NAME.targets.TARGET]`: where a named action goes.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
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
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookTargetConfig {
    /// The URL.
    pub url: Parsed<reqwest::Url>,
    /// `POST`, `PUT` or `GET`.
    #[serde(default = "default_method")]
    pub method: Parsed<reqwest::Method>,
    /// Extra headers; `${VAR}` in a value is replaced by that environment
    /// variable when the pipeline starts (secrets stay out of the file).
    #[serde(default)]
    pub headers: BTreeMap<String, SecretTemplate>,
    /// The whole call's time window, retries included, in milliseconds (1–30 s).
    #[serde(default = "default_webhook_timeout_ms")]
    pub timeout_ms: u64,
    /// Retries within the window (at most 3), never on 401, 403 or 404.
    #[serde(default = "default_retries")]
    pub max_retries: u32,
    /// Environment variable holding the secret that signs each call
    /// (`x-freshet-signature`, HMAC-SHA256 over `{timestamp}.{body}`).
    pub signing_secret_env: Option<SecretEnv>,
    /// Journey-action capping: calls over it are refused (`capped`).
    pub capping: Option<CappingConfig>,
}

/// `[...targets.TARGET.capping]`, as journey actions define it.
#[derive(Debug, Clone, Deserialize, Serialize)]
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

fn default_method() -> Parsed<reqwest::Method> {
    Parsed::from("POST")
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
#[derive(Debug, Clone, Deserialize, Serialize)]
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
    pub username_env: Option<SecretEnv>,
    /// Environment variable holding the SMTP password.
    pub password_env: Option<SecretEnv>,
    /// The sender, e.g. `Shop <orders@example.com>`.
    pub from: Parsed<lettre::message::Mailbox>,
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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
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
#[derive(Debug, Clone, Deserialize, Serialize)]
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
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CrmTargetConfig {
    /// `salesforce`: `PATCH {base_url}/services/data/{api_version}/sobjects/{object}/{id_field}/{id}`;
    /// `hubspot`: `POST {base_url}/crm/v3/objects/{object}/batch/upsert`.
    pub flavor: CrmFlavor,
    /// The instance URL (`https://acme.my.salesforce.com`, `https://api.hubapi.com`).
    pub base_url: Parsed<reqwest::Url>,
    /// The external-id field (Salesforce, e.g. `External_Id__c`) or the
    /// unique property (HubSpot `idProperty`, e.g. `email`).
    pub id_field: String,
    /// Salesforce's REST API version.
    #[serde(default = "default_salesforce_api")]
    pub api_version: String,
    /// OAuth client credentials (`token_url` required); the token is cached
    /// and renewed like AEP's.
    pub oauth: Option<OAuthConfig>,
    /// Or an environment variable holding a fixed bearer token.
    pub token_env: Option<SecretEnv>,
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CrmFlavor {
    /// Salesforce sObject upsert by external id.
    Salesforce,
    /// HubSpot CRM v3 batch upsert.
    Hubspot,
}

/// A record target.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RecordTargetConfig {
    /// The NDJSON file.
    pub path: PathBuf,
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
