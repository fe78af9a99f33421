//! The one table of error codes the gateway itself produces, and the body every such error
//! is rendered into (the 402 contract). `docs/errors.md` is generated from [`ErrorCode::ALL`].

use http::StatusCode;
use serde::Serialize;
use serde_json::{Map, Value};

macro_rules! error_codes {
    ($( $(#[$doc:meta])* $variant:ident => ($code:literal, $status:expr, $message:literal, $remedy:literal) ),+ $(,)?) => {
        /// A stable, machine-readable error code. The string form never changes once released.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $( $(#[$doc])* $variant ),+
        }

        impl ErrorCode {
            /// Every code, in the order of the reference document.
            pub const ALL: &'static [ErrorCode] = &[ $( ErrorCode::$variant ),+ ];

            /// The UPPER_SNAKE code sent in bodies.
            pub const fn as_str(self) -> &'static str {
                match self { $( ErrorCode::$variant => $code ),+ }
            }

            /// The HTTP status this code is always sent with.
            pub const fn status(self) -> StatusCode {
                match self { $( ErrorCode::$variant => $status ),+ }
            }

            /// The default human-readable message.
            pub const fn message(self) -> &'static str {
                match self { $( ErrorCode::$variant => $message ),+ }
            }

            /// What the caller can do about it (used in the reference doc).
            pub const fn remedy(self) -> &'static str {
                match self { $( ErrorCode::$variant => $remedy ),+ }
            }
        }
    };
}

const PAYMENT_REQUIRED: StatusCode = StatusCode::PAYMENT_REQUIRED;

error_codes! {
    /// The period quota of the plan is used up.
    QuotaExceeded => ("QUOTA_EXCEEDED", PAYMENT_REQUIRED,
        "The quota of your plan for the current period is used up.",
        "Wait for the reset given in `details.resets_at` (also `Retry-After`) or upgrade at `details.upgrade_url`."),
    /// The prepaid balance does not cover the estimated cost.
    InsufficientFunds => ("INSUFFICIENT_FUNDS", PAYMENT_REQUIRED,
        "Your account balance is insufficient to cover the estimated cost of this request.",
        "Top up at least `details.required_to_top_up` at `details.top_up_url`."),
    /// A spending cap for the period would be passed.
    SpendingCapReached => ("SPENDING_CAP_REACHED", PAYMENT_REQUIRED,
        "This request would exceed the spending cap for the current period.",
        "Wait for the reset in `details.resets_at` or ask the owner of the cap (`details.scope`) to raise it."),
    /// The subscription is not in a state that allows use (details say which state).
    SubscriptionInactive => ("SUBSCRIPTION_INACTIVE", PAYMENT_REQUIRED,
        "Your subscription is not active.",
        "Settle the outstanding payment or renew the subscription (`details.status` says which state it is in)."),
    /// The subscription waits for an administrator's approval.
    ApprovalPending => ("APPROVAL_PENDING", PAYMENT_REQUIRED,
        "Your subscription is waiting for approval.",
        "Wait for an administrator to approve the subscription."),
    /// The plan does not include this route or feature.
    PlanUpgradeRequired => ("PLAN_UPGRADE_REQUIRED", PAYMENT_REQUIRED,
        "Your current plan does not include this route.",
        "Upgrade to a plan that includes the route at `details.upgrade_url`."),
    /// The plan does not include the requested model.
    PremiumModelAccessDenied => ("PREMIUM_MODEL_ACCESS_DENIED", PAYMENT_REQUIRED,
        "Your plan does not include access to the requested model.",
        "Ask your tenant administrator (`details.contact_admin_email`) for the permission set in `details.required_permission_set`."),
    /// The route is priced per call and no payment was sent (x402).
    PaymentRequired => ("PAYMENT_REQUIRED", PAYMENT_REQUIRED,
        "This route requires a payment.",
        "Pay with one of the offers in `accepts` (x402) and retry with the `PAYMENT-SIGNATURE` header."),
    /// The payment sent could not be accepted (x402).
    PaymentInvalid => ("PAYMENT_INVALID", PAYMENT_REQUIRED,
        "The payment could not be accepted.",
        "Sign a new authorization matching one of the offers in `accepts`; `details.reason` says what was wrong."),
    /// The payment was already used to buy a response, or its payer and nonce belong to another
    /// payment (x402). One payment buys one response.
    PaymentAlreadyUsed => ("PAYMENT_ALREADY_USED", PAYMENT_REQUIRED,
        "This payment was already used.",
        "Sign a new authorization (fresh nonce) for one of the offers in `accepts`; `details.transaction` is the original settlement when known."),
    /// The payment was valid but its settlement failed (x402).
    PaymentSettlementFailed => ("PAYMENT_SETTLEMENT_FAILED", PAYMENT_REQUIRED,
        "The payment could not be settled.",
        "Check the payer's funds and retry with a new authorization."),
    /// No credentials, or credentials that are unknown, revoked or expired.
    Unauthenticated => ("UNAUTHENTICATED", StatusCode::UNAUTHORIZED,
        "Missing or invalid credentials.",
        "Send a valid API key as `Authorization: Bearer <key>` or `x-api-key: <key>`; `details.reason` says what was wrong."),
    /// Forbidden whatever is paid.
    Forbidden => ("FORBIDDEN", StatusCode::FORBIDDEN,
        "You are not allowed to access this resource.",
        "This cannot be fixed by paying; contact the API provider."),
    /// No route matches the request.
    NotFound => ("NOT_FOUND", StatusCode::NOT_FOUND,
        "No route matches this request.",
        "Check the method, host and path."),
    /// Too many requests in a short time (not a quota).
    RateLimited => ("RATE_LIMITED", StatusCode::TOO_MANY_REQUESTS,
        "Too many requests.",
        "Retry after the number of seconds in `Retry-After`."),
    /// The request is malformed.
    BadRequest => ("BAD_REQUEST", StatusCode::BAD_REQUEST,
        "The request is malformed.",
        "Fix the request; `details.reason` says what was wrong."),
    /// The request body is larger than allowed.
    PayloadTooLarge => ("PAYLOAD_TOO_LARGE", StatusCode::PAYLOAD_TOO_LARGE,
        "The request body is too large.",
        "Send at most `details.limit_bytes` bytes."),
    /// The request headers are larger than allowed.
    HeadersTooLarge => ("HEADERS_TOO_LARGE", StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "The request headers are too large.",
        "Send smaller headers."),
    /// The same `Idempotency-Key` was used with a different request.
    IdempotencyConflict => ("IDEMPOTENCY_CONFLICT", StatusCode::CONFLICT,
        "This Idempotency-Key was already used with a different request.",
        "Use a new Idempotency-Key for a different request."),
    /// A request with the same `Idempotency-Key` is still being processed.
    IdempotencyInProgress => ("IDEMPOTENCY_IN_PROGRESS", StatusCode::CONFLICT,
        "A request with this Idempotency-Key is still in progress.",
        "Retry after the number of seconds in `Retry-After`."),
    /// The payment provider (facilitator or chain RPC) cannot be reached.
    PaymentProviderUnavailable => ("PAYMENT_PROVIDER_UNAVAILABLE", StatusCode::SERVICE_UNAVAILABLE,
        "The payment provider cannot be reached right now; nothing was charged.",
        "Retry after the number of seconds in `Retry-After` with the same payment."),
    /// An x402 settlement was sent but its outcome is not known yet.
    PaymentSettlementPending => ("PAYMENT_SETTLEMENT_PENDING", StatusCode::SERVICE_UNAVAILABLE,
        "Your payment was submitted and its settlement is not confirmed yet; do not pay again.",
        "Retry after the number of seconds in `Retry-After` with the same payment; `details.transaction` is the pending transaction."),
    /// The same x402 `payment-identifier` was used with a different payment or request.
    PaymentIdentifierConflict => ("PAYMENT_IDENTIFIER_CONFLICT", StatusCode::CONFLICT,
        "This payment identifier was already used with a different payment.",
        "Use a new payment identifier for a different payment; the same id with the same payment replays the first response."),
    /// The ledger cannot answer; the gateway fails closed.
    StoreUnavailable => ("STORE_UNAVAILABLE", StatusCode::SERVICE_UNAVAILABLE,
        "The gateway cannot check your account right now; nothing was charged.",
        "Retry after the number of seconds in `Retry-After`."),
    /// The upstream could not be reached or answered with an invalid response.
    UpstreamUnavailable => ("UPSTREAM_UNAVAILABLE", StatusCode::BAD_GATEWAY,
        "The upstream service is unavailable; nothing was charged.",
        "Retry later."),
    /// The upstream did not answer in time.
    UpstreamTimeout => ("UPSTREAM_TIMEOUT", StatusCode::GATEWAY_TIMEOUT,
        "The upstream service did not answer in time; nothing was charged.",
        "Retry later."),
    /// An unexpected failure inside the gateway.
    Internal => ("INTERNAL", StatusCode::INTERNAL_SERVER_ERROR,
        "Internal error.",
        "Retry later and quote `request_id` to the API provider."),
}

impl ErrorCode {
    /// The anchor of this code in the errors reference (`insufficient_funds`).
    pub fn anchor(self) -> String {
        self.as_str().to_ascii_lowercase()
    }

    /// Look a code up by its string form.
    pub fn from_str_code(s: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.iter().copied().find(|c| c.as_str() == s)
    }
}

/// The body of every error the gateway itself makes.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ErrorBody {
    /// Stable code.
    pub code: &'static str,
    /// Human-readable message.
    pub message: String,
    /// Code-specific details; `scope` names which limit tripped.
    pub details: Map<String, Value>,
    /// The request id, also in the `x-request-id` header.
    pub request_id: String,
    /// Link to the reference entry for this code.
    pub docs_url: String,
}

impl ErrorBody {
    /// A body with the default message and no details.
    pub fn new(code: ErrorCode, request_id: &str, docs_base: &str) -> Self {
        ErrorBody {
            code: code.as_str(),
            message: code.message().to_string(),
            details: Map::new(),
            request_id: request_id.to_string(),
            docs_url: format!("{docs_base}#{}", code.anchor()),
        }
    }
}

/// Render the errors reference (`docs/errors.md`) from the table.
pub fn render_errors_doc() -> String {
    let mut s = String::from(
        "# Error reference\n\n\
         <!-- Generated from `ErrorCode::ALL` in crates/tollgate-core/src/error.rs by \
         `tollgate errors-doc`; a test fails when this file is stale. -->\n\n\
         Every error the gateway itself makes has this body (on OpenAI- and Anthropic-compatible \
         routes a provider-style `error` object is added beside these keys):\n\n\
         ```json\n{\n  \"code\": \"INSUFFICIENT_FUNDS\",\n  \"message\": \"…\",\n  \"details\": { \"scope\": \"consumer\", … },\n  \"request_id\": \"…\",\n  \"docs_url\": \"…#insufficient_funds\"\n}\n```\n\n\
         Money in `details` is a decimal string in the currency's units. `details.scope` names the \
         limit that tripped (`key`, `consumer`, `tenant`, `plan`). Every 402 carries \
         `Cache-Control: no-store` and, where a URL is configured, a `Link` to the top-up or upgrade \
         page; `Retry-After` is sent where waiting fixes the problem.\n\n\
         | code | status | meaning |\n|---|---|---|\n",
    );
    for c in ErrorCode::ALL {
        s.push_str(&format!(
            "| [`{}`](#{}) | {} | {} |\n",
            c.as_str(),
            c.anchor(),
            c.status().as_u16(),
            c.message()
        ));
    }
    for c in ErrorCode::ALL {
        s.push_str(&format!(
            "\n<a id=\"{}\"></a>\n## {}\n\nHTTP {} {}. {}\n\n**What to do:** {}\n",
            c.anchor(),
            c.as_str(),
            c.status().as_u16(),
            c.status().canonical_reason().unwrap_or(""),
            c.message(),
            c.remedy()
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_upper_snake() {
        let mut seen = std::collections::HashSet::new();
        for c in ErrorCode::ALL {
            assert!(seen.insert(c.as_str()), "duplicate {}", c.as_str());
            assert!(c
                .as_str()
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b == b'_'));
            assert_eq!(ErrorCode::from_str_code(c.as_str()), Some(*c));
        }
    }

    #[test]
    fn payment_codes_are_402_and_others_are_not() {
        use ErrorCode::*;
        for c in [
            QuotaExceeded,
            InsufficientFunds,
            SpendingCapReached,
            SubscriptionInactive,
            ApprovalPending,
            PlanUpgradeRequired,
            PremiumModelAccessDenied,
            PaymentRequired,
            PaymentInvalid,
            PaymentAlreadyUsed,
            PaymentSettlementFailed,
        ] {
            assert_eq!(c.status(), StatusCode::PAYMENT_REQUIRED);
        }
        assert_eq!(RateLimited.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(Unauthenticated.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(StoreUnavailable.status(), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn errors_doc_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/errors.md");
        let on_disk = std::fs::read_to_string(path).unwrap_or_default();
        let fresh = render_errors_doc();
        if std::env::var_os("UPDATE_ERRORS_DOC").is_some() {
            std::fs::write(path, &fresh).unwrap();
            return;
        }
        assert!(
            on_disk == fresh,
            "docs/errors.md is stale: run `UPDATE_ERRORS_DOC=1 cargo test -p tollgate-core errors_doc`"
        );
    }
}
