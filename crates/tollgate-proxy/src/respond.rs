//! The one place where gateway-made errors become HTTP responses (the 402 contract).

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CACHE_CONTROL, CONTENT_TYPE, LINK, RETRY_AFTER};
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::{Map, Value};

use tollgate_core::{ErrorBody, ErrorCode};

/// Boxed error of body streams.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The response body type of the gateway.
pub type Body = http_body_util::combinators::BoxBody<Bytes, BoxError>;

/// A full body from bytes.
pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

/// An upstream response body, streamed on as the gateway's body type.
pub fn streamed(b: crate::connpool::UpstreamBody) -> Body {
    b.map_err(|e| Box::new(e) as BoxError).boxed()
}

/// An error the gateway answers with.
#[derive(Debug, Clone)]
pub struct Reject {
    /// Code from the table.
    pub code: ErrorCode,
    /// Overrides the table's message.
    pub message: Option<String>,
    /// `details`.
    pub details: Map<String, Value>,
    /// Seconds for `Retry-After`.
    pub retry_after: Option<u64>,
    /// URL for the `Link` header with its relation.
    pub link: Option<(String, &'static str)>,
    /// Extra headers.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Extra top-level body fields beside ours (the x402 challenge mirrored in a 402).
    pub extra: Map<String, Value>,
}

impl Reject {
    /// A rejection with no details.
    pub fn new(code: ErrorCode) -> Self {
        Reject {
            code,
            message: None,
            details: Map::new(),
            retry_after: None,
            link: None,
            headers: Vec::new(),
            extra: Map::new(),
        }
    }

    /// Add a response header.
    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// Merge `fields` into the top level of the body (our own keys win).
    pub fn extra_fields(mut self, fields: Map<String, Value>) -> Self {
        self.extra = fields;
        self
    }

    /// Add a detail.
    pub fn detail(mut self, k: &str, v: impl Into<Value>) -> Self {
        self.details.insert(k.to_string(), v.into());
        self
    }

    /// Add a detail when present.
    pub fn detail_opt(self, k: &str, v: Option<impl Into<Value>>) -> Self {
        match v {
            Some(v) => self.detail(k, v),
            None => self,
        }
    }

    /// Set `Retry-After`.
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs.max(1));
        self
    }

    /// Set the `Link` header.
    pub fn link(mut self, url: Option<&str>, rel: &'static str) -> Self {
        self.link = url.map(|u| (u.to_string(), rel));
        self
    }

    /// Override the message.
    pub fn message(mut self, m: impl Into<String>) -> Self {
        self.message = Some(m.into());
        self
    }

    /// Render into a response.
    pub fn into_response(self, request_id: &str, docs_base: &str) -> Response<Body> {
        let mut body = ErrorBody::new(self.code, request_id, docs_base);
        if let Some(m) = self.message {
            body.message = m;
        }
        body.details = self.details;
        let json = if self.extra.is_empty() {
            serde_json::to_vec(&body)
        } else {
            serde_json::to_value(&body).and_then(|v| {
                let mut merged = self.extra;
                if let Value::Object(ours) = v {
                    merged.extend(ours);
                }
                serde_json::to_vec(&Value::Object(merged))
            })
        }
        .unwrap_or_else(|_| b"{\"code\":\"INTERNAL\"}".to_vec());
        let mut resp = Response::new(full(json));
        *resp.status_mut() = self.code.status();
        let h = resp.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if self.code.status() == StatusCode::PAYMENT_REQUIRED
            || self.code.status().is_server_error()
        {
            h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        }
        if let Some(s) = self.retry_after {
            h.insert(RETRY_AFTER, HeaderValue::from(s));
        }
        if let Some((url, rel)) = self.link {
            if let Ok(v) = HeaderValue::from_str(&format!("<{url}>; rel=\"{rel}\"")) {
                h.insert(LINK, v);
            }
        }
        for (k, v) in self.headers {
            h.append(k, v);
        }
        resp
    }
}
