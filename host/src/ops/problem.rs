//! Errors of the admin API as RFC 9457 problem documents
//! (`application/problem+json`), naming the field at fault when there is one.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

/// One failed request.
#[derive(Debug)]
pub struct Problem {
    status: StatusCode,
    detail: String,
    field: Option<String>,
}

impl Problem {
    /// A problem with `status`, explained by `detail`.
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Self {
            status,
            detail: detail.into(),
            field: None,
        }
    }

    /// The request field (JSON path, or `body`) at fault.
    pub fn field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    /// 400: the request is malformed.
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, detail)
    }

    /// 404: nothing there (or nothing the caller may see).
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, detail)
    }

    /// 409: not now (the resource is not in a state that allows it).
    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, detail)
    }

    /// 500: the host failed.
    pub fn internal(error: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, format!("{error:#}"))
    }

    /// The status it answers with.
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl From<crate::state::StateError> for Problem {
    fn from(e: crate::state::StateError) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut body = serde_json::json!({
            "type": "about:blank",
            "title": self.status.canonical_reason().unwrap_or("Error"),
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        if let Some(field) = self.field {
            body["field"] = field.into();
        }
        (
            self.status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            body.to_string(),
        )
            .into_response()
    }
}

/// Parses a JSON request body, an object; a problem names the field that
/// is wrong.
pub fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Problem> {
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| Problem::bad_request(format!("request body: {e}")).field("body"))?;
    // serde reads a struct from an array too: `[]` must not pass as `{}`.
    if !value.is_object() {
        return Err(Problem::bad_request("request body: expected a JSON object").field("body"));
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let problem = Problem::bad_request(format!("request body: {}", e.inner()));
        if path == "." {
            problem.field("body")
        } else {
            problem.field(path)
        }
    })
}
