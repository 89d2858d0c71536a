//! The actions' side of the receiver: webhooks, and CRM upserts the way
//! Salesforce (`PATCH` by external id) and HubSpot (batch upsert by
//! `idProperty`) take them.

use super::aep::{status_response, token_is_live};
use super::{lock, CrmCall, Hook, Scripted, Shared};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

pub(super) async fn hook(
    State(shared): State<Arc<Shared>>,
    Path(rest): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let at = SystemTime::now();
    let scripted = lock(&shared.hook_script).pop_front();
    if let Some(Scripted::Status {
        status,
        retry_after,
    }) = scripted
    {
        return status_response(status, retry_after);
    }
    shared.hook_count.fetch_add(1, Ordering::Relaxed);
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
fn crm_upsert(
    shared: &Shared,
    headers: &HeaderMap,
    mut call: CrmCall,
) -> Result<bool, Box<Response>> {
    if let Some(Scripted::Status {
        status,
        retry_after,
    }) = lock(&shared.crm_script).pop_front()
    {
        return Err(Box::new(status_response(status, retry_after)));
    }
    let authorization = headers.get("authorization").and_then(|v| v.to_str().ok());
    if !token_is_live(shared, authorization) {
        return Err((
            StatusCode::UNAUTHORIZED,
            r#"[{"errorCode":"INVALID_SESSION_ID"}]"#,
        )
            .into_response()
            .into());
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

pub(super) async fn salesforce_upsert(
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
        Err(response) => *response,
    }
}

pub(super) async fn hubspot_upsert(
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
        Err(response) => *response,
    }
}
