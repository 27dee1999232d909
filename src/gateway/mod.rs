//! The gateways (DESIGN §3): thin axum front ends that parse, authenticate and hand over
//! to [`crate::rides`]. Every node serves all of them.
//!
//! - [`rest`] — the REST API, `/healthz`, `/readyz`, `/metrics`;
//! - [`driver_socket`] — `/v1/driver/ws`;
//! - [`trip_stream`] — `/v1/trips/{id}/ws`;
//! - [`ops_stream`] — `/v1/ops/ws`, the operator console's feed;
//! - [`console`] — the operator console page itself;
//! - [`openapi`] — `/openapi.json`, generated from the handlers;
//! - [`socket`] — what every WebSocket shares (buffers, limits, budgets, close frames).

pub mod console;
pub mod driver_socket;
pub mod limits;
pub mod listener;
pub mod openapi;
pub mod ops_stream;
pub mod rest;
pub mod socket;
pub mod trip_stream;

use std::{collections::HashMap, sync::Arc};

use axum::{
    Router,
    extract::{DefaultBodyLimit, FromRequestParts, Query},
    http::{header, request::Parts},
    routing::{get, post},
};

use crate::{
    auth::{Authenticator, MAX_TOKEN_CHARS, Principal},
    cluster::Node,
    config::ServerConfig,
    error::{ApiError, ErrorCode},
    rides::Rides,
    shutdown::Shutdown,
};

/// Largest request body. Every request of the contract fits in well under 1 KiB.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// What every handler and socket task shares. Cloned per request: an `Arc`.
pub type AppState = Arc<App>;

pub struct App {
    pub rides: Arc<Rides>,
    pub auth: Authenticator,
    pub config: ServerConfig,
    pub node: Node,
    /// How many sockets of each kind, and per account, may be open.
    pub budgets: Arc<socket::Budgets>,
    /// How many requests of each kind one client may make.
    pub limits: limits::RateLimits,
    /// Socket tasks close when shutdown begins.
    pub shutdown: Shutdown,
}

/// Every route of the API; `/metrics` too unless it has a listener of its own.
pub fn router(state: AppState, with_metrics: bool) -> Router {
    let router = Router::new()
        .route("/v1/passengers", post(rest::create_passenger))
        .route("/v1/drivers", post(rest::create_driver))
        .route("/v1/trips", post(rest::create_trip))
        .route("/v1/trips/{id}", get(rest::get_trip))
        .route("/v1/trips/{id}/events", get(rest::trip_events))
        .route("/v1/trips/{id}/cancel", post(rest::cancel_trip))
        .route("/v1/trips/{id}/arrive", post(rest::arrive))
        .route("/v1/trips/{id}/start", post(rest::start))
        .route("/v1/trips/{id}/complete", post(rest::complete))
        .route("/v1/trips/{id}/assign", post(rest::assign))
        .route("/v1/offers/{id}/accept", post(rest::accept_offer))
        .route("/v1/offers/{id}/decline", post(rest::decline_offer))
        .route("/v1/ops/snapshot", get(rest::snapshot))
        .route("/v1/ops/cluster", get(rest::cluster))
        .route("/v1/ops/search", get(rest::search))
        .route("/v1/ops/drivers/{id}", get(rest::driver_card))
        .route("/v1/ops/trips/{id}/candidates", get(rest::candidates))
        .route("/v1/ops/tickets", post(rest::ticket))
        .route("/v1/ops/ws", get(ops_stream::ops_socket))
        .route("/v1/driver/ws", get(driver_socket::driver_socket))
        .route("/v1/trips/{id}/ws", get(trip_stream::trip_socket))
        .route("/healthz", get(rest::healthz))
        .route("/readyz", get(rest::readyz))
        .route("/openapi.json", get(openapi::openapi))
        .route("/", get(console::console))
        .route("/console.js", get(console::console))
        .route("/console.css", get(console::console))
        .route("/basemap.json", get(console::console))
        .fallback(|| async { ApiError::not_found("route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                ErrorCode::MethodNotAllowed,
                "method not allowed on this route",
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES));
    let router = if with_metrics {
        router.route("/metrics", get(rest::metrics))
    } else {
        router
    };
    router.with_state(state)
}

/// `/metrics` alone, for `HAIL_METRICS_LISTEN`.
pub fn metrics_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(rest::metrics))
        .fallback(|| async { ApiError::not_found("route") })
        .with_state(state)
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    /// `Authorization: Bearer <token>` (the scheme in any case, RFC 9110); on a WebSocket
    /// upgrade also `?ticket=` (single-use, from `POST /v1/ops/tickets`) or `?token=`,
    /// since browsers cannot set headers there. Tokens are never logged.
    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let from_header = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| {
                let (scheme, token) = value.trim().split_once(' ')?;
                scheme
                    .eq_ignore_ascii_case("bearer")
                    .then(|| token.trim().to_string())
            });
        let is_upgrade = parts
            .headers
            .get(header::UPGRADE)
            .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"websocket"));
        let token = match from_header {
            Some(token) => Some(token),
            None if is_upgrade => {
                let mut query = query_pairs(parts.uri.query());
                if let Some(ticket) = query.remove("ticket") {
                    let redeemed = if ticket.is_empty() || ticket.len() > MAX_TOKEN_CHARS {
                        None
                    } else {
                        state.auth.redeem_ticket(&ticket).await?
                    };
                    return redeemed.ok_or_else(ApiError::unauthorized);
                }
                query.remove("token")
            }
            None => None,
        };
        let Some(token) = token.filter(|t| !t.is_empty() && t.len() <= MAX_TOKEN_CHARS) else {
            return Err(ApiError::unauthorized());
        };
        match state.auth.authenticate(&token).await? {
            Some(principal) => Ok(principal),
            None => Err(ApiError::unauthorized()),
        }
    }
}

/// The client's address (for limits per address): the connection's peer, or what a
/// trusted proxy says.
pub struct ClientAddress(pub Option<std::net::IpAddr>);

impl FromRequestParts<AppState> for ClientAddress {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        Ok(ClientAddress(
            state
                .limits
                .client_address(listener::peer(parts), &parts.headers),
        ))
    }
}

/// A query string's pairs (later keys win); an unparsable query has none.
pub fn query_pairs(query: Option<&str>) -> HashMap<String, String> {
    let uri = format!("/?{}", query.unwrap_or_default());
    uri.parse()
        .ok()
        .and_then(|uri| Query::<HashMap<String, String>>::try_from_uri(&uri).ok())
        .map(|Query(pairs)| pairs)
        .unwrap_or_default()
}

/// Reads `after=N` (default 0) from a query string.
pub fn after_param(query: &HashMap<String, String>) -> Result<i64, ApiError> {
    match query.get("after") {
        None => Ok(0),
        Some(text) => text.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
            ApiError::new(
                ErrorCode::InvalidAfter,
                "after must be a non-negative integer",
            )
        }),
    }
}
