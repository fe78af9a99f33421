//! The admin REST API of tollgate (tenants, consumers, keys, plans, subscriptions, credits,
//! usage), its OpenAPI document, and a CLI client for it.
//!
//! The admin API runs on its own listener. Every request needs `Authorization: Bearer
//! <token>` except [`PUBLIC_PATHS`]; without a configured token every request is refused.
//! Errors use the gateway's error body (`code`, `message`, `details`, `request_id`,
//! `docs_url`), rendered in one place ([`error::render_errors`]).
//!
//! Middleware, outermost first (see [`router`]):
//! 1. request id + error rendering — outermost so every error, including a caught panic and
//!    axum's own 404/405, leaves in the contract body with the request id;
//! 2. catch panic — a bug in a handler is a 500 `INTERNAL`, never a dropped connection;
//! 3. body limit ([`extract::MAX_BODY_BYTES`]) — enforced by the JSON extractors, 413 beyond;
//! 4. authentication — before any handler touches the store.

pub mod api;
pub mod cli;
pub mod error;
pub mod extract;
pub mod model;

use std::future::Future;
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::header::{HeaderValue, AUTHORIZATION, WWW_AUTHENTICATE};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::serve::ListenerExt;
use axum::Router;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tollgate_core::config::Config;
use tollgate_core::ErrorCode;
use tollgate_store::Store;
use tower_http::catch_panic::CatchPanicLayer;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use cli::{run, AdminArgs, AdminCommand, CliError};
pub use error::ApiError;

/// Paths served without authentication.
pub const PUBLIC_PATHS: &[&str] = &["/healthz", "/openapi.json"];

/// What the admin API works on.
#[derive(Clone)]
pub struct AdminState {
    /// The store (directory, ledger, journal).
    pub store: Arc<Store>,
    /// The current configuration snapshot (plans are read from it on every request).
    pub config: Arc<ArcSwap<Config>>,
    /// The admin bearer token, resolved; `None` refuses every request.
    pub token: Option<String>,
}

impl std::fmt::Debug for AdminState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminState")
            .field("store", &self.store)
            .field(
                "token",
                &self
                    .token
                    .as_ref()
                    .map(|_| "<redacted>")
                    .unwrap_or("<none>"),
            )
            .finish_non_exhaustive()
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "tollgate admin API",
        description = "Tenants, consumers, API keys, plans, subscriptions, prepaid credits and \
                       usage of a tollgate gateway. Every endpoint except `/healthz` and \
                       `/openapi.json` needs `Authorization: Bearer <admin token>`. Errors \
                       have the gateway's error body: `code`, `message`, `details`, \
                       `request_id`, `docs_url`. Money is a decimal string."
    ),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    tags(
        (name = "tenants", description = "Tenants own consumers"),
        (name = "consumers", description = "Consumers and their subscriptions"),
        (name = "keys", description = "API keys: shown once, revocable, rotatable"),
        (name = "plans", description = "Plans, read-only (they live in the configuration)"),
        (name = "subscriptions", description = "Plan and state changes, approval workflow"),
        (name = "credits", description = "Prepaid balance: top-ups, adjustments, ledger"),
        (name = "usage", description = "Usage totals and quota standing"),
        (name = "x402", description = "Per-call stablecoin payments (x402) recorded by the gateway"),
        (name = "meta", description = "Health and this document")
    )
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The OpenAPI document (JSON text), as served at `/openapi.json`.
#[utoipa::path(get, path = "/openapi.json", tag = "meta", security(()),
    responses((status = 200, description = "This document", content_type = "application/json")))]
pub async fn openapi_json() -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        openapi_text(),
    )
        .into_response()
}

fn openapi_text() -> &'static str {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(|| openapi().to_pretty_json().unwrap_or_else(|_| "{}".into()))
}

fn documented_routes() -> OpenApiRouter<AdminState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(openapi_json))
        .merge(api::routes())
}

/// The OpenAPI document of every endpoint.
pub fn openapi() -> utoipa::openapi::OpenApi {
    documented_routes().into_openapi()
}

/// The admin API as a router (no socket), for tests and for mounting.
pub fn router(state: AdminState) -> Router {
    let (routes, _doc) = documented_routes().split_for_parts();
    with_layers(routes, state)
}

/// The middleware stack around `routes` (see the crate docs for the order and why).
fn with_layers(routes: Router<AdminState>, state: AdminState) -> Router {
    routes
        .fallback(fallback)
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .layer(DefaultBodyLimit::max(extract::MAX_BODY_BYTES))
        .layer(CatchPanicLayer::new())
        .layer(middleware::from_fn_with_state(
            state.clone(),
            error::render_errors,
        ))
        .with_state(state)
}

/// Serve the admin API on `listener` until `shutdown` resolves, then drain in-flight requests.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AdminState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY on an admin connection");
        }
    });
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn fallback() -> ApiError {
    ApiError::new(ErrorCode::NotFound)
        .message("No admin endpoint matches this path.")
        .detail("reason", "unknown path")
}

fn unauthenticated(message: &str, reason: &str) -> Response {
    let mut res = ApiError::new(ErrorCode::Unauthenticated)
        .message(message)
        .detail("reason", reason)
        .into_response();
    res.headers_mut().insert(
        WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"tollgate-admin\""),
    );
    res
}

/// Compare tokens in constant time; hashing first makes the comparison independent of the
/// length of either token too.
fn token_matches(expected: &str, provided: &str) -> bool {
    let a = Sha256::digest(expected.as_bytes());
    let b = Sha256::digest(provided.as_bytes());
    a.ct_eq(&b).into()
}

async fn authenticate(State(st): State<AdminState>, req: Request, next: Next) -> Response {
    if PUBLIC_PATHS.contains(&req.uri().path()) {
        return next.run(req).await;
    }
    let Some(expected) = st.token.as_deref().filter(|t| !t.is_empty()) else {
        return unauthenticated(
            "The admin API token is not configured; set `server.admin_token` to enable the admin API.",
            "admin token not configured",
        );
    };
    let provided = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        });
    match provided {
        None => unauthenticated(
            "Send the admin token as `Authorization: Bearer <token>`.",
            "missing bearer token",
        ),
        Some(p) if !token_matches(expected, p) => {
            unauthenticated("The admin token is not valid.", "invalid token")
        }
        Some(_) => next.run(req).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_handler_is_a_500_with_our_body() {
        use axum::body::Body;
        use http_body_util::BodyExt;
        use tower::ServiceExt;

        let dir = tempfile::tempdir().unwrap();
        let mut cfg = Config::from_toml("").unwrap();
        cfg.store.path = dir.path().join("t.db").to_string_lossy().into_owned();
        let store = Store::open(&cfg.store, Arc::new(tollgate_store::SystemClock)).unwrap();
        let state = AdminState {
            store: Arc::new(store),
            config: Arc::new(ArcSwap::from_pointee(cfg)),
            token: Some("t".into()),
        };
        async fn boom() -> &'static str {
            panic!("handler bug")
        }
        let app = with_layers(
            Router::new().route("/v1/boom", axum::routing::get(boom)),
            state,
        );
        let req = axum::http::Request::get("/v1/boom")
            .header(AUTHORIZATION, "Bearer t")
            .body(Body::empty())
            .unwrap();
        let res = app.oneshot(req).await.unwrap();
        assert_eq!(res.status(), 500);
        let body: serde_json::Value =
            serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap();
        assert_eq!(body["code"], "INTERNAL");
        assert!(!body.to_string().contains("handler bug"));
    }

    #[test]
    fn token_comparison() {
        assert!(token_matches("s3cret", "s3cret"));
        assert!(!token_matches("s3cret", "s3cre"));
        assert!(!token_matches("s3cret", ""));
    }

    #[test]
    fn openapi_covers_every_route() {
        let doc = openapi();
        let paths: Vec<&String> = doc.paths.paths.keys().collect();
        for p in [
            "/healthz",
            "/openapi.json",
            "/v1/tenants",
            "/v1/tenants/{id}",
            "/v1/consumers",
            "/v1/consumers/{id}",
            "/v1/consumers/{id}/keys",
            "/v1/keys/{id}/revoke",
            "/v1/keys/{id}/rotate",
            "/v1/plans",
            "/v1/plans/{id}",
            "/v1/consumers/{id}/subscription",
            "/v1/consumers/{id}/approve",
            "/v1/consumers/{id}/reject",
            "/v1/consumers/{id}/credits",
            "/v1/consumers/{id}/adjustments",
            "/v1/consumers/{id}/entries",
            "/v1/consumers/{id}/usage",
            "/v1/x402/payments",
            "/v1/journal",
            "/v1/ledger/check",
        ] {
            assert!(
                doc.paths.paths.contains_key(p),
                "{p} missing from {paths:?}"
            );
        }
        assert_eq!(doc.paths.paths.len(), 21);
    }
}
