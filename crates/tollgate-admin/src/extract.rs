//! Extractors that reject with our error body instead of axum's plain-text rejections:
//! JSON bodies (content type, size, syntax, types and unknown fields, with the field named),
//! query strings and path parameters.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use axum::http::HeaderMap;
use serde::de::DeserializeOwned;
use tollgate_core::ErrorCode;

use crate::error::ApiError;

/// Largest accepted admin request body.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// A JSON request body; rejects with 400 `BAD_REQUEST` (or 413 `PAYLOAD_TOO_LARGE`).
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

/// A JSON request body that may be left out entirely (an empty body is `T::default()`).
#[derive(Debug)]
pub struct OptionalJson<T>(pub T);

/// Query parameters; unknown or mistyped parameters are a 400 naming the parameter.
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

/// One path parameter.
#[derive(Debug)]
pub struct ApiPath(pub String);

fn is_json(headers: &HeaderMap) -> bool {
    let Some(ct) = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let mime = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
}

async fn body_bytes<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    Bytes::from_request(req, state).await.map_err(|rej| {
        if rej.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(ErrorCode::PayloadTooLarge)
                .detail("limit_bytes", MAX_BODY_BYTES as u64)
                .detail("reason", "request body too large")
        } else {
            ApiError::bad_field("body", "the request body could not be read")
        }
    })
}

/// Deserialize JSON, naming the field that failed (`details.field`).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        json_error(&path, &inner.to_string())
    })?;
    de.end()
        .map_err(|e| ApiError::bad_field("body", format!("invalid JSON: {e}")))?;
    Ok(value)
}

fn json_error(path: &str, msg: &str) -> ApiError {
    // `?` marks a position serde could not name: a syntax error, not a field.
    if path == "." || path.is_empty() || path == "?" {
        // Unknown fields are reported at the parent; the name is in the message.
        if let Some(name) = msg
            .strip_prefix("unknown field `")
            .and_then(|rest| rest.split('`').next())
        {
            return ApiError::bad_field(name, format!("{name}: {msg}"));
        }
        if let Some(rest) = msg.strip_prefix("missing field `") {
            let name = rest.split('`').next().unwrap_or("body");
            return ApiError::bad_field(name, format!("{name}: {msg}"));
        }
        ApiError::bad_field("body", format!("invalid JSON: {msg}"))
    } else {
        ApiError::bad_field(path, format!("{path}: {msg}"))
    }
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        if !is_json(req.headers()) {
            return Err(ApiError::bad_field(
                "content-type",
                "content-type: expected `application/json`",
            ));
        }
        let bytes = body_bytes(req, state).await?;
        parse_json(&bytes).map(ApiJson)
    }
}

impl<S: Send + Sync, T: DeserializeOwned + Default> FromRequest<S> for OptionalJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let json = is_json(req.headers());
        let has_type = req.headers().contains_key(CONTENT_TYPE);
        let bytes = body_bytes(req, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJson(T::default()));
        }
        if !json {
            let reason = if has_type {
                "content-type: expected `application/json`"
            } else {
                "content-type: missing, expected `application/json`"
            };
            return Err(ApiError::bad_field("content-type", reason));
        }
        parse_json(&bytes).map(OptionalJson)
    }
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let q = parts.uri.query().unwrap_or("");
        let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(q.as_bytes()));
        serde_path_to_error::deserialize(de)
            .map(ApiQuery)
            .map_err(|e| {
                let path = e.path().to_string();
                json_error(&path, &e.into_inner().to_string())
            })
    }
}

impl<S: Send + Sync> FromRequestParts<S> for ApiPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<String>::from_request_parts(parts, state)
            .await
            .map(|p| ApiPath(p.0))
            .map_err(|rej| ApiError::bad_field("path", rej.body_text()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct T {
        amount: String,
        n: Option<u32>,
    }

    #[test]
    fn names_the_field() {
        let e = parse_json::<T>(br#"{"amount": 5}"#).unwrap_err();
        assert_eq!(e.details["field"], "amount");
        let e = parse_json::<T>(br#"{"amount": "1", "bogus": 1}"#).unwrap_err();
        assert_eq!(e.details["field"], "bogus");
        let e = parse_json::<T>(br#"{}"#).unwrap_err();
        assert_eq!(e.details["field"], "amount");
        let e = parse_json::<T>(br#"{"amount": "1"} trailing"#).unwrap_err();
        assert_eq!(e.details["field"], "body");
        let e = parse_json::<T>(b"\xff\xfe").unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
    }
}
