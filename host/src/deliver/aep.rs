//! AEP streaming ingestion through the batch endpoint
//! (`POST {base}/collection/batch/{connection}`).
//!
//! Messages are packed into requests of at most `max_request_bytes` (AEP
//! refuses more than 1 MB), sent with bounded concurrency, and each answer is
//! read per message: a 207 lists one result per message, in order, and only
//! the failed ones are resent. A whole-request 400 or 413 is split in halves
//! until the offending message stands alone and is rejected. A 401 or 403
//! renews the token once; refused again, the batch fails with
//! [`DeliverError::Unauthorized`] (nothing dead-lettered: the credentials,
//! not the events, are wrong).
//!
//! With `sync_validation`, each message goes alone to the single-message
//! endpoint (`POST {base}/collection/{connection}?syncValidation=true`),
//! which validates it against the XDM schema before answering: a 400 lists
//! the violations (`report.cause._streamingValidation[].causingExceptions`),
//! which become the dead letter's reason. AEP allows 60 such requests a
//! minute per connection, so this is for trying a new plugin or schema, not
//! for volume (its 429s are waited out like any other).

use super::auth::Tokens;
use super::{DeliverError, Delivery, Message, Sink};
use crate::retry::{classify, retry_after, Backoff, Verdict};
use bytes::Bytes;
use futures::stream::{self, StreamExt as _};
use serde::Deserialize;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Bytes of `{"messages":[` + `]}`.
const FRAME: usize = 15;

/// The AEP batch sink of one pipeline.
pub struct AepSink {
    client: reqwest::Client,
    url: String,
    tokens: Tokens,
    flow_id: Option<String>,
    max_request_bytes: usize,
    concurrency: usize,
    backoff: (Duration, Duration),
    sync_validation: bool,
    shutdown: CancellationToken,
}

/// Settings for [`AepSink::new`].
#[derive(Debug, Clone)]
pub struct AepSettings {
    /// Scheme, host and port, e.g. `https://dcs.adobedc.net`.
    pub base_url: String,
    /// The streaming connection id.
    pub connection_id: String,
    /// Sent as `x-adobe-flow-id`.
    pub flow_id: Option<String>,
    /// Largest request body.
    pub max_request_bytes: usize,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Per-request timeout.
    pub timeout: Duration,
    /// First and largest wait between attempts.
    pub backoff: (Duration, Duration),
    /// One message per request to the validating single-message endpoint.
    pub sync_validation: bool,
}

#[derive(Deserialize)]
struct BatchAnswer {
    #[serde(default)]
    responses: Option<Vec<MessageAnswer>>,
}

#[derive(Deserialize)]
struct MessageAnswer {
    #[serde(default, rename = "statusCode")]
    status_code: Option<u16>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default, rename = "xactionId")]
    xaction_id: Option<String>,
}

impl AepSink {
    /// A sink for one connection.
    pub fn new(
        settings: AepSettings,
        tokens: Tokens,
        shutdown: CancellationToken,
    ) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(settings.timeout)
            .pool_max_idle_per_host(settings.concurrency)
            .build()?;
        let base = settings.base_url.trim_end_matches('/');
        let url = if settings.sync_validation {
            format!(
                "{base}/collection/{}?syncValidation=true",
                settings.connection_id
            )
        } else {
            format!("{base}/collection/batch/{}", settings.connection_id)
        };
        Ok(Self {
            client,
            url,
            tokens,
            flow_id: settings.flow_id,
            max_request_bytes: settings.max_request_bytes,
            concurrency: settings.concurrency,
            backoff: settings.backoff,
            sync_validation: settings.sync_validation,
            shutdown,
        })
    }

    /// Packs message indices into requests no larger than the limit.
    fn pack(&self, messages: &[Message], out: &mut [Option<Delivery>]) -> Vec<Vec<usize>> {
        let mut requests = Vec::new();
        let mut current = Vec::new();
        let mut size = FRAME;
        for (i, m) in messages.iter().enumerate() {
            let len = m.json.len() + 1;
            if FRAME + len > self.max_request_bytes {
                out[i] = Some(Delivery::Rejected {
                    code: "too_large".into(),
                    reason: format!(
                        "the message is {} bytes; AEP takes at most {} bytes per request",
                        m.json.len(),
                        self.max_request_bytes
                    ),
                });
                continue;
            }
            if (self.sync_validation || size + len > self.max_request_bytes) && !current.is_empty()
            {
                requests.push(std::mem::take(&mut current));
                size = FRAME;
            }
            size += len;
            current.push(i);
        }
        if !current.is_empty() {
            requests.push(current);
        }
        requests
    }

    fn body(&self, messages: &[Message], indices: &[usize]) -> String {
        if self.sync_validation {
            // The single-message endpoint takes the envelope itself.
            return indices
                .first()
                .map_or_else(String::new, |&i| messages[i].json.clone());
        }
        let size = FRAME
            + indices
                .iter()
                .map(|&i| messages[i].json.len() + 1)
                .sum::<usize>();
        let mut body = String::with_capacity(size);
        body.push_str(r#"{"messages":["#);
        for (n, &i) in indices.iter().enumerate() {
            if n > 0 {
                body.push(',');
            }
            body.push_str(&messages[i].json);
        }
        body.push_str("]}");
        body
    }

    async fn wait(
        &self,
        backoff: &mut Backoff,
        server: Option<Duration>,
    ) -> Result<(), DeliverError> {
        let delay = backoff.next(server);
        tokio::select! {
            () = tokio::time::sleep(delay) => Ok(()),
            () = self.shutdown.cancelled() => Err(DeliverError::Cancelled),
        }
    }

    async fn post(
        &self,
        body: Bytes,
        token: Option<&str>,
    ) -> Result<(u16, reqwest::header::HeaderMap, String), reqwest::Error> {
        let mut request = self
            .client
            .post(&self.url)
            .header("content-type", "application/json")
            .body(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(key) = self.tokens.api_key() {
            request = request.header("x-api-key", key);
        }
        if let Some(flow) = &self.flow_id {
            request = request.header("x-adobe-flow-id", flow);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        Ok((status, headers, response.text().await?))
    }

    /// Posts `body` until AEP answers with any status: a token that cannot
    /// be had and a request that fails on the way are retried after a wait.
    /// A request in flight is not abandoned at shutdown (it is bounded by the
    /// request timeout); only waits to retry are.
    async fn exchange(
        &self,
        body: Bytes,
        backoff: &mut Backoff,
    ) -> Result<(u16, reqwest::header::HeaderMap, String), DeliverError> {
        loop {
            let token = match self.tokens.token().await {
                Ok(token) => token,
                Err(e) => {
                    tracing::warn!(error = %e, attempt = backoff.attempts(), "no AEP token; retrying");
                    self.wait(backoff, None).await?;
                    continue;
                }
            };
            // A retry sends the same bytes again: shared, not copied.
            match self.post(body.clone(), token.as_deref()).await {
                Ok(answer) => return Ok(answer),
                Err(e) => {
                    tracing::warn!(url = %self.url, error = %e, attempt = backoff.attempts(), "AEP request failed; retrying");
                    self.wait(backoff, None).await?;
                }
            }
        }
    }

    /// Sends one request's messages until each has a final answer.
    async fn send(
        &self,
        messages: &[Message],
        indices: Vec<usize>,
    ) -> Result<Vec<(usize, Delivery)>, DeliverError> {
        let mut done = Vec::with_capacity(indices.len());
        let mut todo = vec![indices];
        while let Some(mut batch) = todo.pop() {
            let mut backoff = Backoff::new(self.backoff.0, self.backoff.1);
            let mut renewed = false;
            loop {
                let (status, headers, text) = self
                    .exchange(self.body(messages, &batch).into(), &mut backoff)
                    .await?;
                match classify(status) {
                    Verdict::Success if self.sync_validation => {
                        done.extend(batch.iter().map(|&i| (i, Delivery::Delivered)));
                        break;
                    }
                    Verdict::Success => {
                        let retry = read_answers(&batch, status, &text, &mut done);
                        if retry.is_empty() {
                            break;
                        }
                        tracing::warn!(url = %self.url, messages = retry.len(), "AEP asked to resend some messages");
                        batch = retry;
                        self.wait(&mut backoff, retry_after(&headers)).await?;
                    }
                    Verdict::BadContent if batch.len() > 1 => {
                        let second = batch.split_off(batch.len() / 2);
                        todo.push(second);
                        todo.push(batch);
                        break;
                    }
                    Verdict::BadContent | Verdict::Reject => {
                        let reason = rejection(status, &text);
                        let code = format!("http_{status}");
                        done.extend(batch.iter().map(|&i| {
                            let (code, reason) = (code.clone(), reason.clone());
                            (i, Delivery::Rejected { code, reason })
                        }));
                        break;
                    }
                    Verdict::Unauthorized if !renewed => {
                        // Expired or revoked: one new token, at once.
                        tracing::warn!(url = %self.url, status, "AEP refused the token; fetching a new one");
                        self.tokens.invalidate().await;
                        renewed = true;
                    }
                    Verdict::Unauthorized => {
                        return Err(DeliverError::Unauthorized {
                            url: self.url.clone(),
                            status,
                            reason: text.trim().chars().take(300).collect(),
                        });
                    }
                    Verdict::Retry => {
                        let wait = retry_after(&headers);
                        tracing::warn!(url = %self.url, status, retry_after = ?wait, attempt = backoff.attempts(), "AEP asked to retry");
                        self.wait(&mut backoff, wait).await?;
                    }
                }
            }
        }
        Ok(done)
    }
}

/// Why AEP refused a message for good, in words.
fn rejection(status: u16, text: &str) -> String {
    match validation_report(text) {
        Some(violations) => format!("AEP validation failed: {violations}"),
        None if status == 501 => format!("AEP answered 501: syncValidation is not supported in this region; set deliver.sync_validation = false ({})", text.trim()),
        None => format!("AEP answered {status}: {}", text.trim()),
    }
}

/// The violations a syncValidation 400 lists, as `pointer: message; ...`.
fn validation_report(text: &str) -> Option<String> {
    let answer: serde_json::Value = serde_json::from_str(text).ok()?;
    let checks = answer
        .pointer("/report/cause/_streamingValidation")?
        .as_array()?;
    let violations: Vec<String> = checks
        .iter()
        .flat_map(|c| {
            c["causingExceptions"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .map(|e| {
            let at = e["pointerToViolation"].as_str().unwrap_or("");
            let message = e["message"].as_str().unwrap_or("");
            format!("{at}: {message}")
        })
        .collect();
    (!violations.is_empty()).then(|| violations.join("; "))
}

/// Reads a successful answer into `done`; returns the messages to resend.
fn read_answers(
    batch: &[usize],
    status: u16,
    text: &str,
    done: &mut Vec<(usize, Delivery)>,
) -> Vec<usize> {
    let answers = serde_json::from_str::<BatchAnswer>(text)
        .ok()
        .and_then(|a| a.responses);
    let Some(answers) = answers else {
        // A 2xx without per-message results accepted the whole request.
        done.extend(batch.iter().map(|&i| (i, Delivery::Delivered)));
        return Vec::new();
    };
    let mut retry = Vec::new();
    for (n, &i) in batch.iter().enumerate() {
        match answers.get(n) {
            None => retry.push(i),
            Some(MessageAnswer {
                status_code: None, ..
            })
            | Some(MessageAnswer {
                xaction_id: Some(_),
                status_code: Some(200..=299),
                ..
            }) => done.push((i, Delivery::Delivered)),
            Some(MessageAnswer {
                status_code: Some(code),
                message,
                ..
            }) => match classify(*code) {
                Verdict::Retry => retry.push(i),
                Verdict::Success => done.push((i, Delivery::Delivered)),
                _ => done.push((
                    i,
                    Delivery::Rejected {
                        code: format!("http_{code}"),
                        reason: message.clone().unwrap_or_else(|| {
                            format!("AEP answered {status} with {code} for this message")
                        }),
                    },
                )),
            },
        }
    }
    retry
}

#[async_trait::async_trait]
impl Sink for AepSink {
    async fn deliver(&self, messages: &[Message]) -> Result<Vec<Delivery>, DeliverError> {
        let mut out: Vec<Option<Delivery>> = vec![None; messages.len()];
        let requests = self.pack(messages, &mut out);
        let sends: Vec<_> = requests
            .into_iter()
            .map(|r| self.send(messages, r))
            .collect();
        let mut answers = stream::iter(sends).buffer_unordered(self.concurrency);
        while let Some(answer) = answers.next().await {
            for (i, delivery) in answer? {
                out[i] = Some(delivery);
            }
        }
        Ok(out
            .into_iter()
            .map(|d| {
                d.unwrap_or(Delivery::Rejected {
                    code: "lost".into(),
                    reason: "no answer was recorded".into(),
                })
            })
            .collect())
    }
}
