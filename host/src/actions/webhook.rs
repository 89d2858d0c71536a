//! The webhook executor, with journey-action semantics: one time window for
//! the whole call (1–30 s), at most 3 retries inside it, no retry on 401, 403
//! or 404, outcome codes `http_<code>`, `timedout`, `error` (capping is
//! applied to every target by [`super::Executors`]).
//!
//! With `signing_secret_env` set, every attempt carries
//! `x-freshet-timestamp` (Unix seconds) and `x-freshet-signature: v1=HEX`,
//! the HMAC-SHA256 of `{timestamp}.{body}` under the shared secret. A
//! receiver recomputes it over the raw body, compares in constant time, and
//! refuses timestamps more than a few minutes old (replays).

use super::attempts::{http_attempt, within_window};
use super::ActionResult;
use crate::config::WebhookTargetConfig;
use crate::secrets::Secrets;
use anyhow::Context as _;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use std::time::Duration;

/// One configured webhook.
pub struct WebhookTarget {
    client: reqwest::Client,
    url: reqwest::Url,
    method: reqwest::Method,
    headers: HeaderMap,
    window: Duration,
    max_retries: u32,
    signing_secret: Option<Vec<u8>>,
}

/// The signature header's value for a body sent at `timestamp`.
pub fn signature(secret: &[u8], timestamp: i64, body: &str) -> String {
    use hmac::Mac as _;
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    format!("v1={}", hex::encode(mac.finalize().into_bytes()))
}

impl WebhookTarget {
    /// Builds the target; `key` is its config key path; its secrets come
    /// through `secrets`.
    pub fn build(
        config: &WebhookTargetConfig,
        key: &str,
        secrets: &Secrets,
    ) -> anyhow::Result<Self> {
        // Parsed when the file was read, checked by validation.
        let invalid = |k: &str, e: &str| anyhow::anyhow!("{key}.{k}: {e}");
        let url = config.url.value().map_err(|e| invalid("url", e))?.clone();
        let method = config
            .method
            .value()
            .map_err(|e| invalid("method", e))?
            .clone();
        let mut headers = HeaderMap::new();
        for (name, value) in &config.headers {
            let hkey = format!("{key}.headers.{name}");
            let value = secrets.expand(value, &hkey)?;
            let name = HeaderName::from_bytes(name.as_bytes())
                .with_context(|| format!("{hkey}: not a header name"))?;
            let mut value = HeaderValue::from_str(&value)
                .with_context(|| format!("{hkey}: not a header value"))?;
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        let signing_secret = secrets
            .env_opt(
                config.signing_secret_env.as_ref(),
                &format!("{key}.signing_secret_env"),
            )?
            .map(String::into_bytes);
        let client = reqwest::Client::builder()
            .build()
            .with_context(|| format!("{key}: HTTP client"))?;
        Ok(Self {
            client,
            url,
            method,
            headers,
            window: Duration::from_millis(config.timeout_ms),
            max_retries: config.max_retries,
            signing_secret,
        })
    }

    /// Calls the webhook with `body` until it succeeds, fails for good, or
    /// the window closes.
    pub async fn call(&self, idempotency_key: &str, body: &str) -> ActionResult {
        within_window(self.window, self.max_retries, self.url.as_str(), |left| {
            let mut request = self
                .client
                .request(self.method.clone(), self.url.clone())
                .headers(self.headers.clone())
                .header("idempotency-key", idempotency_key)
                .timeout(left);
            if let Some(secret) = &self.signing_secret {
                let now = chrono::Utc::now().timestamp();
                request = request
                    .header("x-freshet-timestamp", now)
                    .header("x-freshet-signature", signature(secret, now, body));
            }
            if self.method != reqwest::Method::GET {
                request = request
                    .header("content-type", "application/json")
                    .body(body.to_owned());
            }
            async move { http_attempt(&self.url, request.send().await).await }
        })
        .await
    }
}
