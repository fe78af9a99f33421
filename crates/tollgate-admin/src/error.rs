//! Errors of the admin API and the one place they are rendered into the contract body
//! (`code`, `message`, `details`, `request_id`, `docs_url`).
//!
//! Handlers and extractors return [`ApiError`]; its `IntoResponse` only records the error in
//! the response extensions. The [`render_errors`] middleware, which also owns the request id,
//! turns that record — or any other error response axum made by itself (405, a caught panic)
//! — into the body. That keeps the request id and the docs base in one place.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rand::Rng;
use serde_json::{Map, Value};
use tollgate_core::{ErrorBody, ErrorCode};
use tollgate_store::StoreError;

use crate::AdminState;

/// Header carrying the request id both ways.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// An error of the admin API: a code from the table, an optional message replacing the
/// table's default, and code-specific details.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// Stable code; decides the HTTP status.
    pub code: ErrorCode,
    /// Message replacing the table's default.
    pub message: Option<String>,
    /// Details (`reason`, `field`, …).
    pub details: Map<String, Value>,
}

impl ApiError {
    /// An error with the table's default message.
    pub fn new(code: ErrorCode) -> Self {
        ApiError {
            code,
            message: None,
            details: Map::new(),
        }
    }

    /// Replace the message.
    pub fn message(mut self, m: impl Into<String>) -> Self {
        self.message = Some(m.into());
        self
    }

    /// Add a detail.
    pub fn detail(mut self, k: &str, v: impl Into<Value>) -> Self {
        self.details.insert(k.to_string(), v.into());
        self
    }

    /// 400 `BAD_REQUEST` naming the offending field.
    pub fn bad_field(field: &str, reason: impl Into<String>) -> Self {
        let reason = reason.into();
        ApiError::new(ErrorCode::BadRequest)
            .message(format!("Invalid request: {reason}"))
            .detail("field", field)
            .detail("reason", reason)
    }

    /// 404 `NOT_FOUND` for a missing resource (`resource` is e.g. `consumer`).
    pub fn not_found(resource: &str, id: &str) -> Self {
        ApiError::new(ErrorCode::NotFound)
            .message(format!("{} `{id}` does not exist.", capitalize(resource)))
            .detail("reason", format!("{resource} not found"))
            .detail("resource", resource)
            .detail("id", id)
    }

    /// 409 for a change that conflicts with the current state.
    ///
    /// The code table has no generic conflict code; `IDEMPOTENCY_CONFLICT` is the 409 it has,
    /// and `details.reason` says what the conflict is.
    pub fn conflict(reason: impl Into<String>) -> Self {
        let reason = reason.into();
        ApiError::new(ErrorCode::IdempotencyConflict)
            .message(format!("Conflict: {reason}"))
            .detail("reason", reason)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = self.message.as_deref().unwrap_or(self.code.message());
        write!(f, "{}: {m}", self.code.as_str())
    }
}

impl std::error::Error for ApiError {}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            // The store says e.g. "consumer `c_1`".
            StoreError::NotFound(what) => match what.split_once(" `") {
                Some((resource, rest)) => {
                    ApiError::not_found(resource, rest.strip_suffix('`').unwrap_or(rest))
                }
                None => ApiError::not_found(&what, ""),
            },
            StoreError::Conflict(reason) => ApiError::conflict(reason),
            StoreError::Sql(_) | StoreError::WriterGone => {
                // The cause is logged once here and never sent: it may name tables or paths.
                tracing::error!(error = %e, "admin store operation failed");
                ApiError::new(ErrorCode::StoreUnavailable)
                    .message("The store cannot be reached right now; nothing was changed.")
            }
        }
    }
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.code.status();
        let mut res = status.into_response();
        res.extensions_mut().insert(self);
        res
    }
}

/// The request id of the current request, in the request extensions.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

fn request_id_from(req: &Request) -> String {
    // Keep a caller's id when it is short and harmless so logs can be joined; else make one.
    let incoming = req
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|s| {
            !s.is_empty()
                && s.len() <= 64
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        });
    match incoming {
        Some(s) => s.to_string(),
        None => format!("req_{:016x}", rand::thread_rng().gen::<u64>()),
    }
}

/// Middleware: assign the request id, and render every error response into the contract body.
pub async fn render_errors(
    State(state): State<AdminState>,
    mut req: Request,
    next: Next,
) -> Response {
    let rid = request_id_from(&req);
    req.extensions_mut().insert(RequestId(rid.clone()));
    let method = req.method().clone();
    let mut res = next.run(req).await;
    let err = match res.extensions_mut().remove::<ApiError>() {
        Some(e) => Some(e),
        None => foreign_error(&res, &method),
    };
    if let Some(err) = err {
        res = render(&state, &rid, err, res);
    }
    if let Ok(v) = HeaderValue::from_str(&rid) {
        res.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    res
}

/// An error response axum or a layer made itself (no [`ApiError`] attached), mapped to a code.
fn foreign_error(res: &Response, method: &axum::http::Method) -> Option<ApiError> {
    let status = res.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return None;
    }
    Some(match status {
        StatusCode::NOT_FOUND => ApiError::new(ErrorCode::NotFound)
            .message("No admin endpoint matches this path.")
            .detail("reason", "unknown path"),
        // No 405 in the table: the path exists but not for this method, which for a caller is
        // "no endpoint matches this request"; the `Allow` header axum set is kept.
        StatusCode::METHOD_NOT_ALLOWED => ApiError::new(ErrorCode::NotFound)
            .message("No admin endpoint matches this method and path.")
            .detail(
                "reason",
                format!("method {method} not allowed on this path"),
            ),
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(ErrorCode::PayloadTooLarge),
        StatusCode::UNAUTHORIZED => ApiError::new(ErrorCode::Unauthenticated),
        StatusCode::FORBIDDEN => ApiError::new(ErrorCode::Forbidden),
        StatusCode::SERVICE_UNAVAILABLE => ApiError::new(ErrorCode::StoreUnavailable),
        s if s.is_client_error() => {
            ApiError::new(ErrorCode::BadRequest).detail("reason", s.as_str().to_string())
        }
        _ => ApiError::new(ErrorCode::Internal),
    })
}

fn render(state: &AdminState, rid: &str, err: ApiError, old: Response) -> Response {
    let docs_base = state.config.load().server.docs_url.clone();
    let mut body = ErrorBody::new(err.code, rid, &docs_base);
    if let Some(m) = err.message {
        body.message = m;
    }
    body.details = err.details;
    if err.code == ErrorCode::Internal {
        tracing::error!(
            request_id = rid,
            "admin request failed with an internal error"
        );
    }
    let bytes = serde_json::to_vec(&body).unwrap_or_else(|_| b"{}".to_vec());
    let (mut parts, _) = old.into_parts();
    parts.status = err.code.status();
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    parts
        .headers
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    parts
        .headers
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if err.code == ErrorCode::StoreUnavailable {
        parts
            .headers
            .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    }
    Response::from_parts(parts, Body::from(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_errors_map_to_codes() {
        let e: ApiError = StoreError::NotFound("consumer `x`".into()).into();
        assert_eq!(e.code, ErrorCode::NotFound);
        assert_eq!(e.message.as_deref(), Some("Consumer `x` does not exist."));
        let e: ApiError = StoreError::Conflict("exists".into()).into();
        assert_eq!(e.code.status(), StatusCode::CONFLICT);
        let e: ApiError = StoreError::Sql("disk I/O error at /secret/path".into()).into();
        assert_eq!(e.code, ErrorCode::StoreUnavailable);
        assert!(!format!("{e}").contains("/secret/path"));
    }
}
