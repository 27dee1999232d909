//! The REST gateway (DESIGN §3): routing, authentication, and handlers that turn requests
//! into ride operations. Handlers stay thin: they parse and authenticate; `rides` does
//! what a request means, with the rules in `trip` (state machine), `dispatch` (offers)
//! and `store` (atomicity).

use std::collections::HashMap;

use axum::{
    Router,
    extract::{DefaultBodyLimit, FromRequestParts, Path, Query, Request, State},
    http::{HeaderMap, StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use utoipa::{OpenApi, ToSchema};

use crate::{
    error::{ApiError, ApiJson, ErrorBody, parse_json, read_body},
    geometry::LatLng,
    ops::Snapshot,
    rides::{self, visible_trip},
    server::AppState,
    store::Role,
    trip::{Change, Trip, TripEvent},
};

pub use crate::rides::Principal;

/// Largest request body. Every request of the contract fits in well under 1 KiB.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

const MAX_NAME_CHARS: usize = 100;
const MAX_PLATE_CHARS: usize = 20;
const MAX_REASON_CHARS: usize = 500;
const MAX_IDEMPOTENCY_KEY_CHARS: usize = 200;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/passengers", post(create_passenger))
        .route("/v1/drivers", post(create_driver))
        .route("/v1/trips", post(create_trip))
        .route("/v1/trips/{id}", get(get_trip))
        .route("/v1/trips/{id}/events", get(trip_events))
        .route("/v1/trips/{id}/cancel", post(cancel_trip))
        .route("/v1/trips/{id}/arrive", post(arrive))
        .route("/v1/trips/{id}/start", post(start))
        .route("/v1/trips/{id}/complete", post(complete))
        .route("/v1/trips/{id}/assign", post(assign))
        .route("/v1/offers/{id}/accept", post(accept_offer))
        .route("/v1/offers/{id}/decline", post(decline_offer))
        .route("/v1/ops/snapshot", get(snapshot))
        .route("/v1/ops/ws", get(crate::ops::ops_socket))
        .route("/v1/driver/ws", get(crate::ws::driver_socket))
        .route("/v1/trips/{id}/ws", get(crate::ws::trip_socket))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .route("/", get(console))
        .route("/console.js", get(console))
        .route("/console.css", get(console))
        .fallback(|| async { ApiError::not_found("route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this route",
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    /// `Authorization: Bearer <token>`; on a WebSocket upgrade also `?token=`, since
    /// browsers cannot set headers there. Tokens are never logged.
    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let from_header = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| {
                value
                    .strip_prefix("Bearer ")
                    .or_else(|| value.strip_prefix("bearer "))
            })
            .map(|token| token.trim().to_string());
        let is_upgrade = parts
            .headers
            .get(header::UPGRADE)
            .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"websocket"));
        let from_query = || {
            let query = parts.uri.query()?;
            let pairs: HashMap<String, String> = serde_urlencoded_pairs(query);
            pairs.get("token").cloned()
        };
        let token = match from_header {
            Some(token) => Some(token),
            None if is_upgrade => from_query(),
            None => None,
        };
        let Some(token) = token.filter(|t| !t.is_empty() && t.len() <= 256) else {
            return Err(ApiError::unauthorized());
        };
        match state.authenticate(&token).await? {
            Some((id, role)) => Ok(Principal { id, role }),
            None => Err(ApiError::unauthorized()),
        }
    }
}

fn serde_urlencoded_pairs(query: &str) -> HashMap<String, String> {
    Query::<HashMap<String, String>>::try_from_uri(
        &format!("/?{query}").parse().unwrap_or_default(),
    )
    .map(|Query(pairs)| pairs)
    .unwrap_or_default()
}

/// Reads `after=N` (default 0) from a query string.
pub fn after_param(query: &HashMap<String, String>) -> Result<i64, ApiError> {
    match query.get("after") {
        None => Ok(0),
        Some(text) => text.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
            ApiError::bad_request("invalid_after", "after must be a non-negative integer")
        }),
    }
}

fn valid_text(field: &str, value: &str, max_chars: usize) -> Result<String, ApiError> {
    let value = value.trim();
    if value.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_body",
            format!("{field} must not be empty"),
        ));
    }
    if value.chars().count() > max_chars || value.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "invalid_body",
            format!("{field} must be at most {max_chars} printable characters"),
        ));
    }
    Ok(value.to_string())
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct PassengerSignup {
    #[schema(example = "Minji")]
    pub name: String,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct DriverSignup {
    pub name: String,
    pub vehicle: Vehicle,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct Vehicle {
    #[schema(example = "12가3456")]
    pub plate: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Credentials {
    pub id: String,
    /// Bearer token. Shown once; store it.
    pub token: String,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct TripRequest {
    pub pickup: LatLng,
    pub dropoff: LatLng,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct CancelRequest {
    pub reason: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct AssignRequest {
    pub driver_id: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EventsPage {
    pub events: Vec<TripEvent>,
}

#[utoipa::path(post, path = "/v1/passengers", tag = "accounts", request_body = PassengerSignup,
    responses((status = 201, body = Credentials), (status = 400, body = ErrorBody)))]
async fn create_passenger(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<PassengerSignup>,
) -> Result<(StatusCode, ApiJson<Credentials>), ApiError> {
    let name = valid_text("name", &body.name, MAX_NAME_CHARS)?;
    let account = state
        .store
        .create_account(Role::Passenger, &name, None)
        .await?;
    Ok((
        StatusCode::CREATED,
        ApiJson(Credentials {
            id: account.id,
            token: account.token,
        }),
    ))
}

#[utoipa::path(post, path = "/v1/drivers", tag = "accounts", request_body = DriverSignup,
    security(("bearer" = [])),
    responses((status = 201, body = Credentials), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn create_driver(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(body): ApiJson<DriverSignup>,
) -> Result<(StatusCode, ApiJson<Credentials>), ApiError> {
    principal.require(Role::Operator)?;
    let name = valid_text("name", &body.name, MAX_NAME_CHARS)?;
    let plate = valid_text("vehicle.plate", &body.vehicle.plate, MAX_PLATE_CHARS)?;
    let account = state
        .store
        .create_account(Role::Driver, &name, Some(&plate))
        .await?;
    Ok((
        StatusCode::CREATED,
        ApiJson(Credentials {
            id: account.id,
            token: account.token,
        }),
    ))
}

#[utoipa::path(post, path = "/v1/trips", tag = "trips", request_body = TripRequest,
    security(("bearer" = [])),
    params(("Idempotency-Key" = Option<String>, Header, description = "A retry with the same key returns the same trip")),
    responses((status = 201, body = Trip), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 409, body = ErrorBody, description = "active_trip_exists or idempotency_key_reused")))]
async fn create_trip(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    ApiJson(body): ApiJson<TripRequest>,
) -> Result<(StatusCode, ApiJson<Trip>), ApiError> {
    principal.require(Role::Passenger)?;
    let idempotency_key = match headers.get("idempotency-key") {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .map(str::trim)
                .filter(|key| !key.is_empty() && key.len() <= MAX_IDEMPOTENCY_KEY_CHARS)
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_idempotency_key",
                        "Idempotency-Key must be 1 to 200 visible ASCII characters",
                    )
                })?
                .to_string(),
        ),
    };
    let trip = rides::request(
        &state,
        &principal,
        body.pickup,
        body.dropoff,
        idempotency_key,
        Instant::now(),
    )
    .await?;
    Ok((StatusCode::CREATED, ApiJson(trip)))
}

#[utoipa::path(get, path = "/v1/trips/{id}", tag = "trips", security(("bearer" = [])),
    responses((status = 200, body = Trip), (status = 404, body = ErrorBody)))]
async fn get_trip(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<ApiJson<Trip>, ApiError> {
    visible_trip(&state, &principal, &id).await.map(ApiJson)
}

#[utoipa::path(get, path = "/v1/trips/{id}/events", tag = "trips", security(("bearer" = [])),
    params(("after" = Option<i64>, Query, description = "Only events with seq > after")),
    responses((status = 200, body = EventsPage), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn trip_events(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<ApiJson<EventsPage>, ApiError> {
    let after = after_param(&query)?;
    visible_trip(&state, &principal, &id).await?;
    let events = state.store.events_after(&id, after).await?;
    Ok(ApiJson(EventsPage { events }))
}

#[utoipa::path(post, path = "/v1/trips/{id}/arrive", tag = "trips", security(("bearer" = [])),
    responses((status = 200, body = Trip), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn arrive(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<ApiJson<Trip>, ApiError> {
    rides::driver_step(&state, &principal, &id, Change::Arrive)
        .await
        .map(ApiJson)
}

#[utoipa::path(post, path = "/v1/trips/{id}/start", tag = "trips", security(("bearer" = [])),
    responses((status = 200, body = Trip), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn start(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<ApiJson<Trip>, ApiError> {
    rides::driver_step(&state, &principal, &id, Change::Start)
        .await
        .map(ApiJson)
}

#[utoipa::path(post, path = "/v1/trips/{id}/complete", tag = "trips", security(("bearer" = [])),
    responses((status = 200, body = Trip), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn complete(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<ApiJson<Trip>, ApiError> {
    rides::complete(&state, &principal, &id).await.map(ApiJson)
}

#[utoipa::path(post, path = "/v1/trips/{id}/cancel", tag = "trips", security(("bearer" = [])),
    request_body(content = Option<CancelRequest>, description = "Optional"),
    responses((status = 200, body = Trip), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody)))]
async fn cancel_trip(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    request: Request,
) -> Result<ApiJson<Trip>, ApiError> {
    let bytes = read_body(request, &state).await?;
    let body: CancelRequest = if bytes.iter().all(u8::is_ascii_whitespace) {
        CancelRequest::default()
    } else {
        parse_json(&bytes)?
    };
    if let Some(reason) = &body.reason {
        valid_text("reason", reason, MAX_REASON_CHARS)?;
    }
    rides::cancel(
        &state,
        &principal,
        &id,
        body.reason.as_deref(),
        Instant::now(),
    )
    .await
    .map(ApiJson)
}

#[utoipa::path(post, path = "/v1/trips/{id}/assign", tag = "operations", request_body = AssignRequest,
    security(("bearer" = [])),
    responses((status = 200, body = Trip), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "driver_unavailable, driver_busy or invalid_transition")))]
async fn assign(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<AssignRequest>,
) -> Result<ApiJson<Trip>, ApiError> {
    principal.require(Role::Operator)?;
    rides::assign(&state, &id, &body.driver_id, Instant::now())
        .await
        .map(ApiJson)
}

#[utoipa::path(post, path = "/v1/offers/{id}/accept", tag = "offers", security(("bearer" = [])),
    responses((status = 200, body = Trip), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody, description = "offer_expired, offer_already_answered or driver_busy")))]
async fn accept_offer(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<ApiJson<Trip>, ApiError> {
    principal.require(Role::Driver)?;
    let event = state
        .dispatcher
        .accept(&id, &principal.id, Instant::now())
        .await?;
    Ok(ApiJson(event.trip))
}

#[utoipa::path(post, path = "/v1/offers/{id}/decline", tag = "offers", security(("bearer" = [])),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn decline_offer(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    principal.require(Role::Driver)?;
    state
        .dispatcher
        .decline(&id, &principal.id, Instant::now())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/ops/snapshot", tag = "operations", security(("bearer" = [])),
    responses((status = 200, body = Snapshot), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn snapshot(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<ApiJson<Snapshot>, ApiError> {
    principal.require(Role::Operator)?;
    crate::ops::snapshot(&state).await.map(ApiJson)
}

#[derive(Serialize, ToSchema)]
struct Health {
    status: &'static str,
}

#[utoipa::path(get, path = "/healthz", tag = "service", responses((status = 200, body = Health)))]
async fn healthz() -> ApiJson<Health> {
    ApiJson(Health { status: "ok" })
}

#[utoipa::path(get, path = "/readyz", tag = "service",
    responses((status = 200, body = Health), (status = 503, body = ErrorBody)))]
async fn readyz(State(state): State<AppState>) -> Result<ApiJson<Health>, ApiError> {
    match state.store.ping().await {
        Ok(()) => Ok(ApiJson(Health { status: "ready" })),
        Err(error) => {
            tracing::warn!(%error, "not ready");
            Err(ApiError::unavailable("the store is unreachable"))
        }
    }
}

#[utoipa::path(get, path = "/metrics", tag = "service", responses((status = 200, description = "Prometheus metrics")))]
async fn metrics(State(state): State<AppState>) -> Response {
    let online = state.fleet.lock().unwrap().len();
    state.metrics.drivers_online.set(online as i64);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

async fn openapi() -> Response {
    let mut doc = ApiDoc::openapi();
    let mut components = doc.components.take().unwrap_or_default();
    components.add_security_scheme(
        "bearer",
        utoipa::openapi::security::SecurityScheme::Http(utoipa::openapi::security::Http::new(
            utoipa::openapi::security::HttpAuthScheme::Bearer,
        )),
    );
    doc.components = Some(components);
    (
        [(header::CONTENT_TYPE, "application/json")],
        doc.to_pretty_json().unwrap_or_default(),
    )
        .into_response()
}

/// The operator console: a page, its script and its style, embedded in the binary so it
/// needs no build step and loads nothing from elsewhere (src/console/console.js explains
/// how it works). The policy keeps it that way: scripts, styles and connections only from
/// this server; images from anywhere, for the optional map tiles an operator may set.
async fn console(uri: axum::http::Uri) -> Response {
    let (content_type, body) = match uri.path() {
        "/console.js" => (
            "text/javascript; charset=utf-8",
            include_str!("console/console.js"),
        ),
        "/console.css" => (
            "text/css; charset=utf-8",
            include_str!("console/console.css"),
        ),
        _ => (
            "text/html; charset=utf-8",
            include_str!("console/index.html"),
        ),
    };
    (
        [
            (header::CONTENT_TYPE, content_type),
            // Revalidate: a new binary must not run against a cached older script.
            (header::CACHE_CONTROL, "no-cache"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; img-src * data:; connect-src 'self'; \
                 frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "hail",
        description = "Ride-hailing dispatch: REST + WebSocket contract v1. \
        WebSockets: GET /v1/driver/ws (driver), GET /v1/trips/{id}/ws?after=N (trip stream)."
    ),
    paths(
        create_passenger,
        create_driver,
        create_trip,
        get_trip,
        trip_events,
        cancel_trip,
        arrive,
        start,
        complete,
        assign,
        accept_offer,
        decline_offer,
        snapshot,
        healthz,
        readyz,
        metrics,
        crate::ws::driver_socket,
        crate::ws::trip_socket,
        crate::ops::ops_socket
    ),
    components(schemas(crate::hub::ServerMessage, crate::ws::DriverClientMessage))
)]
pub struct ApiDoc;
