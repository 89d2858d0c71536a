//! Where a bearer token comes from (AEP's, a CRM's): none (an
//! unauthenticated inlet), a fixed token from the environment, or OAuth
//! client credentials (Adobe IMS server-to-server, Salesforce, HubSpot),
//! cached and renewed before it expires and whenever the API answers 401.

use crate::secrets::{SecretEnv, SecretError, Secrets};
use serde::Deserialize;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// IMS's documented scopes for streaming ingestion.
pub const DEFAULT_SCOPE: &str =
    "openid,AdobeID,read_organizations,additional_info.projectedProductContext,session";

/// IMS client-credentials settings.
#[derive(Debug, Clone)]
pub struct ImsCredentials {
    /// `https://ims-na1.adobelogin.com/ims/token/v3` (or a loopback peer).
    pub token_url: String,
    /// The OAuth client id (also sent to AEP as `x-api-key`).
    pub client_id: String,
    /// The OAuth client secret.
    pub client_secret: String,
    /// The scopes asked for.
    pub scope: String,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    /// Seconds; IMS gives 86399. Salesforce gives none: its tokens live as
    /// long as the org's session timeout, and a 401 renews them anyway.
    #[serde(default = "default_expires_in")]
    expires_in: u64,
}

fn default_expires_in() -> u64 {
    1800
}

/// A bearer token provider.
pub enum Tokens {
    /// No `Authorization` header.
    None,
    /// The same token always.
    Fixed(String),
    /// Fetched from IMS and cached.
    Ims {
        /// The credentials.
        credentials: ImsCredentials,
        /// The HTTP client for IMS.
        client: reqwest::Client,
        /// The cached token and when to stop using it.
        cached: Mutex<Option<(String, Instant)>>,
    },
}

/// Why no token could be had; the request is retried later.
#[derive(Debug, thiserror::Error)]
#[error("fetching an IMS token from {url}: {reason}")]
pub struct TokenError {
    url: String,
    reason: String,
}

/// OAuth client-credentials settings as a config names them (AEP's
/// `deliver.ims`, a CRM's `oauth`): the secrets by reference.
#[derive(Debug, Clone, Copy)]
pub struct OAuthSettings<'a> {
    /// The token endpoint.
    pub token_url: &'a str,
    /// The variable holding the client id.
    pub client_id: &'a SecretEnv,
    /// The variable holding the client secret.
    pub client_secret: &'a SecretEnv,
    /// The scopes asked for; empty for none.
    pub scope: &'a str,
}

impl Tokens {
    /// The provider a config names — client credentials, a fixed token from
    /// `token_env`, or none — its secrets read through `secrets`; `key` is
    /// the settings' key path (`pipelines.p.deliver`), `oauth_key` the
    /// client credentials' name under it (`ims`, `oauth`).
    pub fn configured(
        oauth: Option<OAuthSettings<'_>>,
        token_env: Option<&SecretEnv>,
        secrets: &Secrets,
        (key, oauth_key): (&str, &str),
        timeout: Duration,
    ) -> Result<Self, SecretError> {
        if let Some(o) = oauth {
            let credentials = ImsCredentials {
                token_url: o.token_url.to_owned(),
                client_id: secrets.env(o.client_id, &format!("{key}.{oauth_key}.client_id_env"))?,
                client_secret: secrets.env(
                    o.client_secret,
                    &format!("{key}.{oauth_key}.client_secret_env"),
                )?,
                scope: o.scope.to_owned(),
            };
            return Tokens::ims(credentials, timeout).map_err(|e| SecretError {
                key: format!("{key}.{oauth_key}"),
                message: format!("HTTP client: {e}"),
            });
        }
        Ok(match token_env {
            Some(var) => Tokens::Fixed(secrets.env(var, &format!("{key}.token_env"))?),
            None => Tokens::None,
        })
    }

    /// An IMS-backed provider.
    pub fn ims(credentials: ImsCredentials, timeout: Duration) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder().timeout(timeout).build()?;
        Ok(Tokens::Ims {
            credentials,
            client,
            cached: Mutex::new(None),
        })
    }

    /// The client id to send as `x-api-key`, when IMS is used.
    pub fn api_key(&self) -> Option<&str> {
        match self {
            Tokens::Ims { credentials, .. } => Some(&credentials.client_id),
            _ => None,
        }
    }

    /// The token to send now, fetching a new one when the cached one is
    /// missing or near its end.
    pub async fn token(&self) -> Result<Option<String>, TokenError> {
        let (credentials, client, cached) = match self {
            Tokens::None => return Ok(None),
            Tokens::Fixed(token) => return Ok(Some(token.clone())),
            Tokens::Ims {
                credentials,
                client,
                cached,
            } => (credentials, client, cached),
        };
        let mut cached = cached.lock().await;
        if let Some((token, until)) = cached.as_ref() {
            if Instant::now() < *until {
                return Ok(Some(token.clone()));
            }
        }
        let error = |reason: String| TokenError {
            url: credentials.token_url.clone(),
            reason,
        };
        let answer = client
            .post(&credentials.token_url)
            .form(
                &[
                    ("grant_type", "client_credentials"),
                    ("client_id", credentials.client_id.as_str()),
                    ("client_secret", credentials.client_secret.as_str()),
                    ("scope", credentials.scope.as_str()),
                ][..if credentials.scope.is_empty() { 3 } else { 4 }],
            )
            .send()
            .await
            .map_err(|e| error(e.to_string()))?;
        let status = answer.status();
        let text = answer.text().await.map_err(|e| error(e.to_string()))?;
        if !status.is_success() {
            return Err(error(format!(
                "IMS answered {status}: {}",
                text.chars().take(300).collect::<String>()
            )));
        }
        let token: TokenAnswer =
            serde_json::from_str(&text).map_err(|e| error(format!("unreadable answer: {e}")))?;
        // Renew a minute early (or at 90 % of a short lifetime), so a token
        // never expires between being read here and reaching AEP.
        let life = Duration::from_secs(token.expires_in);
        let until = Instant::now() + life.saturating_sub(Duration::from_secs(60).min(life / 10));
        tracing::info!(url = %credentials.token_url, expires_in = token.expires_in, "fetched an IMS token");
        *cached = Some((token.access_token.clone(), until));
        Ok(Some(token.access_token))
    }

    /// Forgets the cached token (AEP refused it); the next request fetches one.
    pub async fn invalidate(&self) {
        if let Tokens::Ims { cached, .. } = self {
            *cached.lock().await = None;
        }
    }
}
