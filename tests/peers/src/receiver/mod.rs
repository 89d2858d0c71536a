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
//!
//! In a test it runs inside the test's runtime and is inspected directly;
//! `freshet bench` runs it as a process of its own (`freshet-peers
//! receiver`) and reads what it saw from `GET /freshet-peer/...`
//! ([`observe`]), so the benchmark's figures are not flattered by a
//! receiver sharing the host's runtime.

mod actions;
mod aep;
pub mod observe;

use actions::{hook, hubspot_upsert, salesforce_upsert};
use aep::{batch, single, token};
use axum::http::HeaderMap;
use axum::routing::{get, post};
use axum::Router;
use serde_json::Value;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

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
    /// When it arrived (the wall clock, comparable across processes).
    pub at: SystemTime,
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
    /// When its request arrived (the wall clock, comparable across processes).
    pub at: SystemTime,
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
    sync_messages: Mutex<Vec<SystemTime>>,
    crm: Mutex<Vec<CrmCall>>,
    message_count: AtomicU64,
    request_count: AtomicU64,
    hook_count: AtomicU64,
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
        Self::start_on(([127, 0, 0, 1], 0).into(), keep).await
    }

    /// Starts on `addr`, keeping what it receives with `keep`.
    pub async fn start_on(addr: SocketAddr, keep: bool) -> std::io::Result<Self> {
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
            .route("/freshet-peer/counts", get(observe::counts))
            .route("/freshet-peer/hooks", get(observe::hooks))
            .route("/freshet-peer/messages", get(observe::messages))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind(addr).await?;
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

    /// Its port.
    pub fn port(&self) -> u16 {
        self.addr.port()
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

    /// Webhook calls answered 2xx so far.
    pub fn hook_count(&self) -> u64 {
        self.shared.hook_count.load(Ordering::Relaxed)
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
