//! A loopback HTTP peer that speaks AEP's batch ingestion protocol, takes
//! webhooks, and upserts CRM records the way Salesforce and HubSpot do, for
//! `freshet bench` and the integration tests.
//!
//! It answers like AEP: `POST /collection/batch/{id}` gets a 207 with one
//! result per message. With [`Receiver::require_ims`] it also plays Adobe
//! IMS (`POST /ims/token/v3`, client credentials) and refuses AEP requests
//! whose bearer token it did not issue or that has expired, with a 401. Answers can be scripted ahead (a 500, a 429 with
//! `Retry-After`, a 207 rejecting one message) to exercise failure paths
//! against the real client code.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// A scripted answer to the next AEP request (or webhook call).
#[derive(Debug, Clone)]
pub enum Scripted {
    /// Answer the whole request with this status (and `Retry-After` seconds).
    Status {
        /// The HTTP status.
        status: u16,
        /// `Retry-After` in seconds.
        retry_after: Option<u64>,
    },
    /// Drop the connection in the middle of the answer (headers sent, body
    /// cut), as a reset or a crashed proxy does.
    Hangup,
    /// Answer 207, rejecting the message at this index of the request.
    RejectMessage {
        /// The message's index in the request.
        index: usize,
        /// Its status code, e.g. 400.
        status: u16,
        /// AEP's message.
        message: String,
    },
}

/// A webhook call as received.
#[derive(Debug, Clone)]
pub struct Hook {
    /// The request path.
    pub path: String,
    /// The `Idempotency-Key` header.
    pub idempotency_key: Option<String>,
    /// The request headers.
    pub headers: HeaderMap,
    /// The body as JSON.
    pub body: Value,
    /// The body as sent.
    pub raw: String,
    /// When it arrived.
    pub at: Instant,
}

/// A CRM upsert as received (either flavour), in arrival order.
#[derive(Debug, Clone)]
pub struct CrmCall {
    /// `salesforce` or `hubspot`.
    pub flavor: &'static str,
    /// The object type (`Contact`).
    pub object: String,
    /// The external-id field or `idProperty`.
    pub id_field: String,
    /// The external id.
    pub id: String,
    /// The fields upserted.
    pub fields: Value,
    /// The `Idempotency-Key` header.
    pub idempotency_key: Option<String>,
    /// Whether this upsert created the record (else it updated it).
    pub created: bool,
}

/// An AEP message as received, and when.
#[derive(Debug, Clone)]
pub struct Received {
    /// The envelope.
    pub envelope: Value,
    /// When its request arrived.
    pub at: Instant,
}

/// The IMS side: who may get tokens, and what was issued.
#[derive(Default)]
struct Ims {
    client: Option<(String, String)>,
    expires_in: u64,
    issued: Vec<(String, Instant)>,
}

#[derive(Default)]
struct Shared {
    ims: Mutex<Ims>,
    keep: bool,
    aep_script: Mutex<VecDeque<Scripted>>,
    hook_script: Mutex<VecDeque<Scripted>>,
    messages: Mutex<Vec<Received>>,
    hooks: Mutex<Vec<Hook>>,
    crm_script: Mutex<VecDeque<Scripted>>,
    sync_messages: Mutex<Vec<Instant>>,
    crm: Mutex<Vec<CrmCall>>,
    message_count: AtomicU64,
    request_count: AtomicU64,
    auth: Mutex<Vec<Option<String>>>,
}

/// A running receiver; stops when dropped.
pub struct Receiver {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Receiver {
    /// Starts on `127.0.0.1:0`. With `keep`, every message and webhook is
    /// kept for inspection; without, only counted (for the benchmark).
    pub async fn start(keep: bool) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            keep,
            ..Shared::default()
        });
        let app = Router::new()
            .route("/collection/batch/{connection}", post(batch))
            .route("/collection/{connection}", post(single))
            .route("/hooks/{*rest}", post(hook).put(hook))
            .route("/ims/token/v3", post(token))
            .route(
                "/services/data/{version}/sobjects/{object}/{field}/{id}",
                axum::routing::patch(salesforce_upsert),
            )
            .route(
                "/crm/v3/objects/{object}/batch/upsert",
                post(hubspot_upsert),
            )
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, shared, task })
    }

    /// Messages that came through the single-message (syncValidation) endpoint.
    pub fn validated_count(&self) -> usize {
        lock(&self.shared.sync_messages).len()
    }

    /// Answers the next CRM call with `answer`.
    pub fn script_crm(&self, answer: Scripted) {
        lock(&self.shared.crm_script).push_back(answer);
    }

    /// The CRM upserts accepted so far.
    pub fn crm_calls(&self) -> Vec<CrmCall> {
        lock(&self.shared.crm).clone()
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Issues tokens to this client that live `expires_in` seconds, and
    /// from now on refuses AEP requests without a live one.
    pub fn require_ims(&self, client_id: &str, client_secret: &str, expires_in: u64) {
        let mut ims = lock(&self.shared.ims);
        ims.client = Some((client_id.to_owned(), client_secret.to_owned()));
        ims.expires_in = expires_in;
    }

    /// Tokens issued so far.
    pub fn tokens_issued(&self) -> usize {
        lock(&self.shared.ims).issued.len()
    }

    /// Scripts the answer to a coming AEP request (answers queue in order).
    pub fn script_aep(&self, answer: Scripted) {
        lock(&self.shared.aep_script).push_back(answer);
    }

    /// Scripts the answer to a coming webhook call.
    pub fn script_hook(&self, answer: Scripted) {
        lock(&self.shared.hook_script).push_back(answer);
    }

    /// Messages accepted so far (kept only with `keep`).
    pub fn messages(&self) -> Vec<Received> {
        lock(&self.shared.messages).clone()
    }

    /// Webhook calls answered 2xx so far (kept only with `keep`).
    pub fn hooks(&self) -> Vec<Hook> {
        lock(&self.shared.hooks).clone()
    }

    /// Messages accepted so far.
    pub fn message_count(&self) -> u64 {
        self.shared.message_count.load(Ordering::Relaxed)
    }

    /// AEP requests received so far, whatever their answer.
    pub fn request_count(&self) -> u64 {
        self.shared.request_count.load(Ordering::Relaxed)
    }

    /// The `Authorization` header of each AEP request, in order.
    pub fn authorizations(&self) -> Vec<Option<String>> {
        lock(&self.shared.auth).clone()
    }
}

fn status_response(status: u16, retry_after: Option<u64>) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (
        code,
        json!({"message": format!("scripted {status}")}).to_string(),
    )
        .into_response();
    if let Some(seconds) = retry_after {
        response.headers_mut().insert("retry-after", seconds.into());
    }
    response
}

/// A 200 whose body fails after the headers: hyper cuts the connection.
fn hangup() -> Response {
    let cut = futures::stream::once(async {
        Err::<Bytes, std::io::Error>(std::io::Error::other("connection cut by the test"))
    });
    (StatusCode::OK, axum::body::Body::from_stream(cut)).into_response()
}

/// What every AEP request goes through: counted, its token checked, then
/// a scripted whole-request answer; else the script for its messages.
fn admit(shared: &Shared, headers: &HeaderMap) -> Result<Option<Scripted>, Response> {
    shared.request_count.fetch_add(1, Ordering::Relaxed);
    let authorization = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    lock(&shared.auth).push(authorization.clone());
    if !token_is_live(shared, authorization.as_deref()) {
        return Err((
            StatusCode::UNAUTHORIZED,
            r#"{"message":"missing, unknown or expired token"}"#,
        )
            .into_response());
    }
    match lock(&shared.aep_script).pop_front() {
        Some(Scripted::Status {
            status,
            retry_after,
        }) => Err(status_response(status, retry_after)),
        Some(Scripted::Hangup) => Err(hangup()),
        other => Ok(other),
    }
}

/// The single-message endpoint with `syncValidation=true`: a scripted
/// rejection answers 400 with a validation report, as AEP does.
async fn single(
    State(shared): State<Arc<Shared>>,
    Path(_connection): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let at = Instant::now();
    let scripted = match admit(&shared, &headers) {
        Ok(scripted) => scripted,
        Err(response) => return response,
    };
    if let Some(Scripted::RejectMessage {
        status, message, ..
    }) = scripted
    {
        let report = json!({"type": "http://ns.adobe.com/aep/errors/XDM-1010-400", "status": status,
        "report": {"cause": {"_streamingValidation": [{"causingExceptions": [
            {"schemaLocation": "#", "pointerToViolation": "#/_acme/amount", "keyword": "type", "message": message}
        ]}]}}});
        return (
            StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
            report.to_string(),
        )
            .into_response();
    }
    shared.message_count.fetch_add(1, Ordering::Relaxed);
    if shared.keep {
        lock(&shared.sync_messages).push(at);
        lock(&shared.messages).push(Received {
            envelope: serde_json::from_slice(&body).unwrap_or(Value::Null),
            at,
        });
    }
    let answer = json!({"inletId": "loopback", "xactionId": "x", "receivedTimeMs": 0, "syncValidation": {"status": "pass"}});
    (StatusCode::OK, answer.to_string()).into_response()
}

async fn batch(
    State(shared): State<Arc<Shared>>,
    Path(_connection): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let at = Instant::now();
    let scripted = match admit(&shared, &headers) {
        Ok(scripted) => scripted,
        Err(response) => return response,
    };
    // Messages are held raw: the benchmark counts them without building
    // trees, and only a receiver that keeps them parses each one.
    #[derive(serde::Deserialize)]
    struct Request<'a> {
        #[serde(borrow)]
        messages: Vec<&'a serde_json::value::RawValue>,
    }
    let messages = match serde_json::from_slice::<Request<'_>>(&body) {
        Ok(request) => request.messages,
        Err(e) => {
            let answer = json!({"message": format!("the body is not a batch: {e}")});
            return (StatusCode::BAD_REQUEST, answer.to_string()).into_response();
        }
    };
    let rejected = match scripted {
        Some(Scripted::RejectMessage {
            index,
            status,
            message,
        }) => Some((index, status, message)),
        _ => None,
    };
    let mut responses = Vec::with_capacity(messages.len());
    let mut accepted = 0;
    let mut kept = Vec::new();
    for (i, raw) in messages.into_iter().enumerate() {
        match &rejected {
            Some((index, status, message)) if *index == i => {
                responses.push(json!({"statusCode": status, "message": message}));
            }
            _ => {
                accepted += 1;
                responses.push(json!({"xactionId": format!("x-{i}")}));
                if shared.keep {
                    kept.push(Received {
                        envelope: serde_json::from_str(raw.get()).unwrap_or(Value::Null),
                        at,
                    });
                }
            }
        }
    }
    shared.message_count.fetch_add(accepted, Ordering::Relaxed);
    lock(&shared.messages).extend(kept);
    let answer =
        json!({"inletId": "loopback", "batchId": "b", "receivedTimeMs": 0, "responses": responses});
    (StatusCode::MULTI_STATUS, answer.to_string()).into_response()
}

async fn hook(
    State(shared): State<Arc<Shared>>,
    Path(rest): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let at = Instant::now();
    let scripted = lock(&shared.hook_script).pop_front();
    if let Some(Scripted::Status {
        status,
        retry_after,
    }) = scripted
    {
        return status_response(status, retry_after);
    }
    if shared.keep {
        lock(&shared.hooks).push(Hook {
            path: format!("/hooks/{rest}"),
            idempotency_key: headers
                .get("idempotency-key")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
            raw: String::from_utf8_lossy(&body).into_owned(),
            headers,
            at,
        });
    }
    (StatusCode::OK, "{}").into_response()
}

/// Records one CRM upsert after the checks a CRM makes: a scripted answer
/// first, then (with OAuth required) a live token. `Ok(created)`.
fn crm_upsert(shared: &Shared, headers: &HeaderMap, mut call: CrmCall) -> Result<bool, Response> {
    if let Some(Scripted::Status {
        status,
        retry_after,
    }) = lock(&shared.crm_script).pop_front()
    {
        return Err(status_response(status, retry_after));
    }
    let authorization = headers.get("authorization").and_then(|v| v.to_str().ok());
    if !token_is_live(shared, authorization) {
        return Err((
            StatusCode::UNAUTHORIZED,
            r#"[{"errorCode":"INVALID_SESSION_ID"}]"#,
        )
            .into_response());
    }
    call.idempotency_key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut calls = lock(&shared.crm);
    call.created = !calls
        .iter()
        .any(|c| c.object == call.object && c.id_field == call.id_field && c.id == call.id);
    let created = call.created;
    calls.push(call);
    Ok(created)
}

async fn salesforce_upsert(
    State(shared): State<Arc<Shared>>,
    Path((_version, object, field, id)): Path<(String, String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let call = CrmCall {
        flavor: "salesforce",
        object,
        id_field: field,
        id,
        fields: serde_json::from_slice(&body).unwrap_or(Value::Null),
        idempotency_key: None,
        created: false,
    };
    match crm_upsert(&shared, &headers, call) {
        Ok(created) => {
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            (
                status,
                json!({"id": "003000000000001", "success": true, "created": created}).to_string(),
            )
                .into_response()
        }
        Err(response) => response,
    }
}

async fn hubspot_upsert(
    State(shared): State<Arc<Shared>>,
    Path(object): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let Some([input]) = body["inputs"].as_array().map(Vec::as_slice) else {
        return (
            StatusCode::BAD_REQUEST,
            r#"{"message":"one input expected"}"#,
        )
            .into_response();
    };
    let call = CrmCall {
        flavor: "hubspot",
        object,
        id_field: input["idProperty"].as_str().unwrap_or_default().to_owned(),
        id: input["id"].as_str().unwrap_or_default().to_owned(),
        fields: input["properties"].clone(),
        idempotency_key: None,
        created: false,
    };
    match crm_upsert(&shared, &headers, call) {
        Ok(created) => (
            StatusCode::OK,
            json!({"status": "COMPLETE", "results": [{"id": "1", "new": created, "properties": input["properties"]}]}).to_string(),
        )
            .into_response(),
        Err(response) => response,
    }
}

/// With IMS required, whether `authorization` carries a live issued token.
fn token_is_live(shared: &Shared, authorization: Option<&str>) -> bool {
    let ims = lock(&shared.ims);
    if ims.client.is_none() {
        return true;
    }
    let Some(token) = authorization.and_then(|a| a.strip_prefix("Bearer ")) else {
        return false;
    };
    ims.issued
        .iter()
        .any(|(issued, until)| issued == token && Instant::now() < *until)
}

async fn token(
    State(shared): State<Arc<Shared>>,
    axum::Form(form): axum::Form<Vec<(String, String)>>,
) -> Response {
    let field = |name: &str| {
        form.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let mut ims = lock(&shared.ims);
    let client_ok = matches!(&ims.client, Some((id, secret))
        if field("client_id") == Some(id.as_str()) && field("client_secret") == Some(secret.as_str()));
    if !client_ok || field("grant_type") != Some("client_credentials") {
        return (StatusCode::UNAUTHORIZED, r#"{"error":"invalid_client"}"#).into_response();
    }
    let token = format!("tok-{}", ims.issued.len() + 1);
    let until = Instant::now() + std::time::Duration::from_secs(ims.expires_in);
    ims.issued.push((token.clone(), until));
    let answer =
        json!({"access_token": token, "token_type": "bearer", "expires_in": ims.expires_in});
    (StatusCode::OK, answer.to_string()).into_response()
}
