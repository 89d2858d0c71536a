//! What the receiver saw, over HTTP, for a process that started it as a
//! peer of its own (`freshet-peers receiver`): the counts always, the
//! messages and webhooks when it keeps them. Times are microseconds since
//! the Unix epoch, so another process on the machine can compare them
//! with its own clock.

use super::{lock, Shared};
use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// `GET /freshet-peer/counts`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Counts {
    /// AEP messages accepted.
    pub messages: u64,
    /// AEP requests received, whatever their answer.
    pub requests: u64,
    /// Webhook calls answered 2xx.
    pub hooks: u64,
}

/// One webhook call or AEP message in `GET /freshet-peer/hooks` or
/// `/messages`: its JSON body (a message's envelope) and when it arrived.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Arrival {
    /// The webhook's body, or the AEP message's envelope.
    pub body: Value,
    /// When it arrived, in µs since the Unix epoch.
    pub at_unix_us: u64,
}

fn unix_us(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

pub(super) async fn counts(State(shared): State<Arc<Shared>>) -> Json<Counts> {
    Json(Counts {
        messages: shared.message_count.load(Ordering::Relaxed),
        requests: shared.request_count.load(Ordering::Relaxed),
        hooks: shared.hook_count.load(Ordering::Relaxed),
    })
}

pub(super) async fn hooks(State(shared): State<Arc<Shared>>) -> Json<Vec<Arrival>> {
    let hooks = lock(&shared.hooks);
    Json(
        hooks
            .iter()
            .map(|h| Arrival {
                body: h.body.clone(),
                at_unix_us: unix_us(h.at),
            })
            .collect(),
    )
}

pub(super) async fn messages(State(shared): State<Arc<Shared>>) -> Json<Vec<Arrival>> {
    let messages = lock(&shared.messages);
    Json(
        messages
            .iter()
            .map(|m| Arrival {
                body: m.envelope.clone(),
                at_unix_us: unix_us(m.at),
            })
            .collect(),
    )
}
