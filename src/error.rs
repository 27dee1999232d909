//! The one error type of the request path, and the one place that maps every layer's
//! errors to HTTP statuses and wire codes.
//!
//! Lower layers return their own errors ([`StoreError`] from the store); handlers return
//! [`ApiError`], whose body is always `{"error": {"code", "message"}}` (DESIGN §3) with a
//! stable [`ErrorCode`]. `anyhow` is only for start-up and background tasks.

use axum::{
    Json,
    body::Bytes,
    extract::{FromRequest, Request},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde::{Serialize, de::DeserializeOwned};

pub use crate::protocol::ErrorCode;
use crate::{
    protocol::rest::{ErrorBody, ErrorDetail},
    store::StoreError,
};

/// A client-visible failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// Seconds after which a retry may succeed (`Retry-After`), when known.
    pub retry_after_s: Option<u64>,
}

impl ErrorCode {
    /// The HTTP status each code is answered with.
    pub fn status(self) -> StatusCode {
        use ErrorCode::*;
        match self {
            MalformedJson
            | InvalidBody
            | InvalidAfter
            | InvalidCoordinates
            | InvalidIdempotencyKey
            | InvalidMessage
            | MessageTooLarge
            | UnsupportedFrame
            | InvalidUpgrade => StatusCode::BAD_REQUEST,
            UpgradeRequired => StatusCode::UPGRADE_REQUIRED,
            Unauthorized => StatusCode::UNAUTHORIZED,
            Forbidden => StatusCode::FORBIDDEN,
            NotFound => StatusCode::NOT_FOUND,
            MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            InvalidTransition | OfferExpired | OfferAlreadyAnswered | ActiveTripExists
            | DriverBusy | DriverUnavailable | IdempotencyKeyReused | ReasonRequired => {
                StatusCode::CONFLICT
            }
            PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            RateLimited | TooManySockets => StatusCode::TOO_MANY_REQUESTS,
            Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            retry_after_s: None,
        }
    }

    /// 429 `rate_limited`, to be retried after `wait`.
    pub fn rate_limited(what: &str, wait: std::time::Duration) -> Self {
        let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
        ApiError {
            code: ErrorCode::RateLimited,
            message: format!("too many {what}; retry in {seconds} s"),
            retry_after_s: Some(seconds),
        }
    }

    pub fn status(&self) -> StatusCode {
        self.code.status()
    }

    pub fn unauthorized() -> Self {
        Self::new(
            ErrorCode::Unauthorized,
            "a valid bearer token is required (Authorization: Bearer <token>)",
        )
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Forbidden, message)
    }

    /// Unknown *or not yours*: callers must not learn whether another user's object exists.
    pub fn not_found(what: &str) -> Self {
        Self::new(ErrorCode::NotFound, format!("{what} not found"))
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unavailable, message)
    }

    pub fn internal() -> Self {
        Self::new(ErrorCode::Internal, "internal error")
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message.clone(),
            },
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}): {}",
            self.code,
            self.status().as_u16(),
            self.message
        )
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status(), Json(self.body())).into_response();
        // Every 503 of ours changed nothing and is worth retrying shortly.
        let retry_after = self
            .retry_after_s
            .or((self.code == ErrorCode::Unavailable).then_some(1));
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, seconds.into());
        }
        if self.code == ErrorCode::UpgradeRequired {
            // RFC 6455 §4.4: say which WebSocket version the server speaks.
            response.headers_mut().insert(
                axum::http::header::SEC_WEBSOCKET_VERSION,
                axum::http::HeaderValue::from_static("13"),
            );
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> ApiError {
        use ErrorCode::*;
        match error {
            StoreError::NotFound(what) => ApiError::not_found(what),
            StoreError::InvalidTransition(e) => ApiError::new(InvalidTransition, e.to_string()),
            StoreError::NotYours => ApiError::not_found("trip"),
            StoreError::DriverBusy => ApiError::new(DriverBusy, error.to_string()),
            StoreError::PassengerBusy => ApiError::new(
                ActiveTripExists,
                "you already have an active trip; cancel or finish it first",
            ),
            StoreError::IdempotencyKeyReused => {
                ApiError::new(IdempotencyKeyReused, error.to_string())
            }
            StoreError::OfferLapsed => ApiError::new(OfferExpired, "this offer lapsed"),
            StoreError::OfferWithdrawn => ApiError::new(OfferExpired, "this offer was withdrawn"),
            StoreError::TripGone => ApiError::new(OfferExpired, "the trip is no longer available"),
            StoreError::OfferAnswered => {
                ApiError::new(OfferAlreadyAnswered, "this offer was already answered")
            }
            StoreError::Contention => {
                ApiError::unavailable("too much contention on this trip; retry")
            }
            StoreError::Unavailable(e) => {
                // Said once per outage by the store and /readyz; per request it would
                // bury the log under every client's retries.
                tracing::debug!(error = %e, "store unavailable");
                ApiError::unavailable("the store is unavailable; nothing was changed, retry later")
            }
            StoreError::DriverHasOffer | StoreError::TripHasOffer | StoreError::Fenced => {
                // Dispatch-internal outcomes; a client request never causes them.
                tracing::error!(%error, "dispatch outcome reached a client");
                ApiError::internal()
            }
            StoreError::Database(e) => {
                tracing::error!(error = %e, "store error");
                ApiError::internal()
            }
            StoreError::Corrupt(e) => {
                tracing::error!(error = %e, "corrupt row");
                ApiError::internal()
            }
        }
    }
}

/// A JSON body, read whatever the `Content-Type`, with every failure in our error format:
/// 400 for malformed JSON or a wrong shape (including invalid coordinates), 413 for a body
/// over the limit.
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = read_body(request, state).await?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// The raw body, with a body over the limit answered as 413 in our format.
pub async fn read_body<S: Send + Sync>(request: Request, state: &S) -> Result<Bytes, ApiError> {
    Bytes::from_request(request, state)
        .await
        .map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(ErrorCode::PayloadTooLarge, "the request body is too large")
            } else {
                ApiError::new(ErrorCode::InvalidBody, rejection.body_text())
            }
        })
}

pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|error| match error.classify() {
        serde_json::error::Category::Data => {
            ApiError::new(ErrorCode::InvalidBody, error.to_string())
        }
        _ => ApiError::new(
            ErrorCode::MalformedJson,
            format!("the body is not valid JSON: {error}"),
        ),
    })
}

impl<T: Serialize> IntoResponse for ApiJson<T> {
    fn into_response(self) -> Response {
        Json(self.0).into_response()
    }
}
