//! The CRM executor: upsert an object by external id, in one of two
//! flavours the big CRMs share.
//!
//! - `salesforce`: `PATCH {base}/services/data/{version}/sobjects/{object}/{id_field}/{id}`
//!   with the fields as the body; 201 created, 200/204 updated.
//! - `hubspot`: `POST {base}/crm/v3/objects/{object}/batch/upsert` with
//!   `{"inputs": [{"idProperty": id_field, "id": id, "properties": fields}]}`.
//!
//! An upsert is idempotent by nature (the same fields land on the same
//! record), so a replay is harmless; the action's key also travels as
//! `Idempotency-Key`. The bearer token comes from OAuth client credentials,
//! cached; a 401 or 403 renews it once and retries. Other outcomes follow
//! the journey-action rules (no retry on 401, 403 or 404).

use super::attempts::{http_attempt, within_window, Attempt};
use super::ActionResult;
use crate::config::{CrmFlavor, CrmTargetConfig};
use crate::deliver::auth::Tokens;
use crate::retry::{classify, Verdict};
use crate::secrets::Secrets;
use anyhow::{anyhow, Context as _};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// One configured CRM.
pub struct CrmTarget {
    client: reqwest::Client,
    flavor: CrmFlavor,
    base: reqwest::Url,
    id_field: String,
    api_version: String,
    tokens: Tokens,
    window: Duration,
    max_retries: u32,
}

impl CrmTarget {
    /// Builds the target; `key` is its config key path; its secrets come
    /// through `secrets`.
    pub fn build(config: &CrmTargetConfig, key: &str, secrets: &Secrets) -> anyhow::Result<Self> {
        let window = Duration::from_millis(config.timeout_ms);
        // Validation made sure a CRM's `oauth` names its token endpoint.
        let oauth = config.oauth.as_ref().map(|o| o.settings(("", "")));
        let tokens = Tokens::configured(
            oauth,
            config.token_env.as_ref(),
            secrets,
            (key, "oauth"),
            window,
        )?;
        let mut base = (config.base_url.value())
            .map_err(|e| anyhow!("{key}.base_url: {e}"))?
            .clone();
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        Ok(Self {
            client: reqwest::Client::builder()
                .build()
                .with_context(|| format!("{key}: HTTP client"))?,
            flavor: config.flavor,
            base,
            id_field: config.id_field.clone(),
            api_version: config.api_version.clone(),
            tokens,
            window,
            max_retries: config.max_retries,
        })
    }

    /// The request for one upsert: URL, method, body.
    fn request(
        &self,
        object: &str,
        id: &str,
        fields: &str,
    ) -> anyhow::Result<(reqwest::Url, reqwest::Method, String)> {
        let mut url = self.base.clone();
        let method = match self.flavor {
            CrmFlavor::Salesforce => {
                url.path_segments_mut()
                    .map_err(|()| anyhow!("{} cannot take a path", self.base))?
                    .pop_if_empty()
                    .extend([
                        "services",
                        "data",
                        &self.api_version,
                        "sobjects",
                        object,
                        &self.id_field,
                        id,
                    ]);
                reqwest::Method::PATCH
            }
            CrmFlavor::Hubspot => {
                url.path_segments_mut()
                    .map_err(|()| anyhow!("{} cannot take a path", self.base))?
                    .pop_if_empty()
                    .extend(["crm", "v3", "objects", object, "batch", "upsert"]);
                reqwest::Method::POST
            }
        };
        let body = match self.flavor {
            CrmFlavor::Salesforce => fields.to_owned(),
            CrmFlavor::Hubspot => {
                let properties: serde_json::Value = serde_json::from_str(fields)?;
                serde_json::json!({"inputs": [{"idProperty": self.id_field, "id": id, "properties": properties}]})
                    .to_string()
            }
        };
        Ok((url, method, body))
    }

    /// Upserts `object` `id` with `fields` (a JSON object).
    pub async fn upsert(
        &self,
        idempotency_key: &str,
        object: &str,
        id: &str,
        fields: &str,
    ) -> ActionResult {
        let (url, method, body) = match self.request(object, id, fields) {
            Ok(request) => request,
            Err(e) => {
                return ActionResult::Failed {
                    outcome: "error".into(),
                    reason: format!("cannot build the upsert of {object} {id:?}: {e:#}"),
                }
            }
        };
        let renewed = AtomicBool::new(false);
        within_window(self.window, self.max_retries, url.as_str(), |left| {
            let (url, method, body, renewed) = (&url, method.clone(), body.clone(), &renewed);
            async move {
                let token = match self.tokens.token().await {
                    Ok(token) => token,
                    Err(e) => {
                        return Attempt::Retry {
                            outcome: "error".into(),
                            reason: e.to_string(),
                            retry_after: None,
                        }
                    }
                };
                let mut request = self
                    .client
                    .request(method, url.clone())
                    .header("idempotency-key", idempotency_key)
                    .header("content-type", "application/json")
                    .timeout(left)
                    .body(body);
                if let Some(token) = token {
                    request = request.bearer_auth(token);
                }
                let sent = request.send().await;
                let status = sent.as_ref().map_or(0, |r| r.status().as_u16());
                if classify(status) == Verdict::Unauthorized
                    && matches!(self.tokens, Tokens::Ims { .. })
                    && !renewed.swap(true, Ordering::Relaxed)
                {
                    // The token expired or was revoked: one fresh token, once.
                    self.tokens.invalidate().await;
                    return Attempt::Retry {
                        outcome: format!("http_{status}"),
                        reason: format!("{url} refused the token; renewing it"),
                        retry_after: Some(Duration::ZERO),
                    };
                }
                match sent {
                    // A batch answers 207 when an input failed: that is ours.
                    Ok(r) if r.status() == reqwest::StatusCode::MULTI_STATUS => Attempt::Fail {
                        outcome: "http_207".into(),
                        reason: format!(
                            "{url}: {}",
                            r.text()
                                .await
                                .unwrap_or_default()
                                .chars()
                                .take(500)
                                .collect::<String>()
                        ),
                    },
                    sent => http_attempt(url, sent).await,
                }
            }
        })
        .await
    }
}
