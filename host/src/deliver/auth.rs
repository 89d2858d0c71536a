//! Where a bearer token comes from (AEP's, a CRM's): none (an
//! unauthenticated inlet), a fixed token from the environment, or OAuth
//! client credentials (Adobe IMS server-to-server, Salesforce, HubSpot),
//! cached and renewed before it expires and whenever the API answers 401.

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

impl Tokens {
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
