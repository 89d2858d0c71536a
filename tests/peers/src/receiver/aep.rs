//! The AEP side of the receiver: batch and single-message ingestion, the
//! IMS token endpoint, and the checks and scripted answers every AEP
//! request goes through.

use super::{lock, Received, Scripted, Shared};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

pub(super) fn status_response(status: u16, retry_after: Option<u64>) -> Response {
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
fn admit(shared: &Shared, headers: &HeaderMap) -> Result<Option<Scripted>, Box<Response>> {
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
            .into_response()
            .into());
    }
    match lock(&shared.aep_script).pop_front() {
        Some(Scripted::Status {
            status,
            retry_after,
        }) => Err(Box::new(status_response(status, retry_after))),
        Some(Scripted::Hangup) => Err(Box::new(hangup())),
        other => Ok(other),
    }
}

/// The single-message endpoint with `syncValidation=true`: a scripted
/// rejection answers 400 with a validation report, as AEP does.
pub(super) async fn single(
    State(shared): State<Arc<Shared>>,
    Path(_connection): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let at = SystemTime::now();
    let scripted = match admit(&shared, &headers) {
        Ok(scripted) => scripted,
        Err(response) => return *response,
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

pub(super) async fn batch(
    State(shared): State<Arc<Shared>>,
    Path(_connection): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let at = SystemTime::now();
    let scripted = match admit(&shared, &headers) {
        Ok(scripted) => scripted,
        Err(response) => return *response,
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

/// With IMS required, whether `authorization` carries a live issued token.
pub(super) fn token_is_live(shared: &Shared, authorization: Option<&str>) -> bool {
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

pub(super) async fn token(
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
