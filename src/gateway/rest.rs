//! The REST API (DESIGN §3): each handler parses and authenticates, then hands over to a
//! ride operation ([`crate::rides`]) or a read.

use std::collections::HashMap;

use axum::{
    extract::{Path, Query, Request, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use tokio::time::Instant;

use super::{AppState, ClientAddress, after_param};
use crate::{
    auth::Principal,
    error::{ApiError, ApiJson, ErrorCode, parse_json, read_body},
    ops,
    protocol::{
        operators::{Candidates, DriverCard, SearchResults, Snapshot},
        rest::{
            AssignRequest, CancelRequest, ClusterView, Credentials, DependencyState, DispatchRole,
            DriverSignup, ErrorBody, EventsPage, Health, MAX_IDEMPOTENCY_KEY_CHARS, MAX_NAME_CHARS,
            MAX_PLATE_CHARS, MAX_REASON_CHARS, PassengerSignup, RateLimited, Readiness,
            SearchQuery, SocketTicket, TripRequest, Unavailable,
        },
    },
    trip::{Change, Role, Trip},
};

/// A free-text field as `PRINTABLE_TEXT_PATTERN` and its `max_length` state it, trimmed.
/// The length is counted as sent, before trimming, so that the server and the published
/// schema agree on every string.
fn valid_text(field: &str, value: &str, max_chars: usize) -> Result<String, ApiError> {
    if value.chars().count() > max_chars || value.chars().any(char::is_control) {
        return Err(ApiError::new(
            ErrorCode::InvalidBody,
            format!("{field} must be at most {max_chars} characters, none a control character"),
        ));
    }
    let value = value.trim();
    if value.is_empty() {
        return Err(ApiError::new(
            ErrorCode::InvalidBody,
            format!("{field} must not be empty or only white space"),
        ));
    }
    Ok(value.to_string())
}

#[utoipa::path(post, path = "/v1/passengers", tag = "accounts", request_body = PassengerSignup,
    responses((status = 201, body = Credentials), (status = 400, body = ErrorBody),
              (status = 413, body = ErrorBody), (status = 429, response = RateLimited), (status = 503, response = Unavailable)))]
pub async fn create_passenger(
    State(state): State<AppState>,
    ClientAddress(address): ClientAddress,
    ApiJson(body): ApiJson<PassengerSignup>,
) -> Result<(StatusCode, ApiJson<Credentials>), ApiError> {
    let name = valid_text("name", &body.name, MAX_NAME_CHARS)?;
    state.limits.sign_up(address)?;
    let account = state
        .rides
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
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 413, body = ErrorBody), (status = 429, response = RateLimited), (status = 503, response = Unavailable)))]
pub async fn create_driver(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(body): ApiJson<DriverSignup>,
) -> Result<(StatusCode, ApiJson<Credentials>), ApiError> {
    principal.require(Role::Operator)?;
    state.limits.write(&principal)?;
    let name = valid_text("name", &body.name, MAX_NAME_CHARS)?;
    let plate = valid_text("vehicle.plate", &body.vehicle.plate, MAX_PLATE_CHARS)?;
    let account = state
        .rides
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
    params(("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 200, pattern = "^[!-~]+$",
            description = "1–200 visible ASCII characters; a retry with the same key returns the same trip")),
    responses((status = 201, body = Trip), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 409, body = ErrorBody, description = "active_trip_exists or idempotency_key_reused"),
              (status = 413, body = ErrorBody), (status = 429, response = RateLimited), (status = 503, response = Unavailable)))]
pub async fn create_trip(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    ApiJson(body): ApiJson<TripRequest>,
) -> Result<(StatusCode, ApiJson<Trip>), ApiError> {
    principal.require(Role::Passenger)?;
    state.limits.trip_request(&principal)?;
    let idempotency_key = match headers.get("idempotency-key") {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .map(str::trim)
                .filter(|key| {
                    !key.is_empty()
                        && key.len() <= MAX_IDEMPOTENCY_KEY_CHARS
                        && key.bytes().all(|b| b.is_ascii_graphic())
                })
                .ok_or_else(|| {
                    ApiError::new(
                        ErrorCode::InvalidIdempotencyKey,
                        "Idempotency-Key must be 1 to 200 visible ASCII characters",
                    )
                })?
                .to_string(),
        ),
    };
    let trip = state
        .rides
        .request(
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
    params(("id" = String, Path, description = "Trip id")),
    responses((status = 200, body = Trip), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 503, response = Unavailable)))]
pub async fn get_trip(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<ApiJson<Trip>, ApiError> {
    state.rides.visible_trip(&principal, &id).await.map(ApiJson)
}

#[utoipa::path(get, path = "/v1/trips/{id}/events", tag = "trips", security(("bearer" = [])),
    params(("id" = String, Path, description = "Trip id"),
           ("after" = Option<i64>, Query, minimum = 0, maximum = 9223372036854775807i64, description = "Only events with seq > after")),
    responses((status = 200, body = EventsPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 503, response = Unavailable)))]
pub async fn trip_events(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<ApiJson<EventsPage>, ApiError> {
    let after = after_param(&query)?;
    let events = state.rides.events(&principal, &id, after).await?;
    Ok(ApiJson(EventsPage { events }))
}

#[utoipa::path(post, path = "/v1/trips/{id}/arrive", tag = "trips", security(("bearer" = [])),
    params(("id" = String, Path, description = "Trip id")),
    responses((status = 200, body = Trip), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 429, response = RateLimited), (status = 503, response = Unavailable)))]
pub async fn arrive(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<ApiJson<Trip>, ApiError> {
    driver_step(&state, &principal, &id, Change::Arrive).await
}

#[utoipa::path(post, path = "/v1/trips/{id}/start", tag = "trips", security(("bearer" = [])),
    params(("id" = String, Path, description = "Trip id")),
    responses((status = 200, body = Trip), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 429, response = RateLimited), (status = 503, response = Unavailable)))]
pub async fn start(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<ApiJson<Trip>, ApiError> {
    driver_step(&state, &principal, &id, Change::Start).await
}

async fn driver_step(
    state: &AppState,
    principal: &Principal,
    id: &str,
    change: Change,
) -> Result<ApiJson<Trip>, ApiError> {
    state.limits.write(principal)?;
    state
        .rides
        .driver_step(principal, id, change, Instant::now())
        .await
        .map(ApiJson)
}

/// The driver ends the ride (the fare is metered); an operator resolves a ride whose
/// driver cannot (the fare is the estimate), and must say why.
#[utoipa::path(post, path = "/v1/trips/{id}/complete", tag = "trips", security(("bearer" = [])),
    params(("id" = String, Path, description = "Trip id")),
    request_body(content = Option<CancelRequest>, description = "The driver sends nothing; an operator must give a `reason`"),
    responses((status = 200, body = Trip), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "invalid_transition, or reason_required (an operator's)"),
              (status = 413, body = ErrorBody), (status = 429, response = RateLimited), (status = 503, response = Unavailable)))]
pub async fn complete(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    request: Request,
) -> Result<ApiJson<Trip>, ApiError> {
    let reason = optional_reason(request, &state).await?;
    state.limits.write(&principal)?;
    state
        .rides
        .complete(&principal, &id, reason, Instant::now())
        .await
        .map(ApiJson)
}

/// A body that is nothing, `null`, or `{"reason": …}`: the reason, validated.
async fn optional_reason(request: Request, state: &AppState) -> Result<Option<String>, ApiError> {
    let bytes = read_body(request, state).await?;
    // No body, and a JSON `null`, both mean no reason: the document says the body is
    // optional, and `null` is how a JSON client says "none".
    let body: CancelRequest = if bytes.iter().all(u8::is_ascii_whitespace) {
        CancelRequest::default()
    } else {
        parse_json::<Option<CancelRequest>>(&bytes)?.unwrap_or_default()
    };
    body.reason
        .as_deref()
        .map(|reason| valid_text("reason", reason, MAX_REASON_CHARS))
        .transpose()
}

#[utoipa::path(post, path = "/v1/trips/{id}/cancel", tag = "trips", security(("bearer" = [])),
    params(("id" = String, Path, description = "Trip id")),
    request_body(content = Option<CancelRequest>, description = "Optional: no body, or `null`, cancels without a reason"),
    responses((status = 200, body = Trip), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody),
              (status = 429, response = RateLimited), (status = 503, response = Unavailable)))]
pub async fn cancel_trip(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    request: Request,
) -> Result<ApiJson<Trip>, ApiError> {
    let reason = optional_reason(request, &state).await?;
    state.limits.trip_request(&principal)?;
    state
        .rides
        .cancel(&principal, &id, reason, Instant::now())
        .await
        .map(ApiJson)
}

#[utoipa::path(post, path = "/v1/trips/{id}/assign", tag = "operations", request_body = AssignRequest,
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Trip id")),
    responses((status = 200, body = Trip), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody, description = "driver_unavailable, driver_busy or invalid_transition"),
              (status = 413, body = ErrorBody), (status = 429, response = RateLimited), (status = 503, response = Unavailable)))]
pub async fn assign(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<AssignRequest>,
) -> Result<ApiJson<Trip>, ApiError> {
    let reason = body
        .reason
        .as_deref()
        .map(|reason| valid_text("reason", reason, MAX_REASON_CHARS))
        .transpose()?;
    state.limits.write(&principal)?;
    state
        .rides
        .assign(&principal, &id, &body.driver_id, reason, Instant::now())
        .await
        .map(ApiJson)
}

#[utoipa::path(post, path = "/v1/offers/{id}/accept", tag = "offers", security(("bearer" = [])),
    params(("id" = String, Path, description = "Offer id")),
    responses((status = 200, body = Trip), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody, description = "offer_expired, offer_already_answered or driver_busy"),
              (status = 429, response = RateLimited), (status = 503, response = Unavailable)))]
pub async fn accept_offer(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<ApiJson<Trip>, ApiError> {
    state.limits.write(&principal)?;
    state
        .rides
        .accept(&principal, &id, Instant::now())
        .await
        .map(ApiJson)
}

#[utoipa::path(post, path = "/v1/offers/{id}/decline", tag = "offers", security(("bearer" = [])),
    params(("id" = String, Path, description = "Offer id")),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 429, response = RateLimited), (status = 503, response = Unavailable)))]
pub async fn decline_offer(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.limits.write(&principal)?;
    state.rides.decline(&principal, &id, Instant::now()).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/ops/snapshot", tag = "operations", security(("bearer" = [])),
    responses((status = 200, body = Snapshot), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 503, response = Unavailable)))]
pub async fn snapshot(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<ApiJson<Snapshot>, ApiError> {
    principal.require(Role::Operator)?;
    let rides = &state.rides;
    Ok(ApiJson(ops::snapshot(&rides.sources()).await?))
}

/// Longest search text, in characters.
const MAX_SEARCH_CHARS: usize = 100;

#[utoipa::path(get, path = "/v1/ops/search", tag = "operations", security(("bearer" = [])),
    params(SearchQuery),
    responses((status = 200, body = SearchResults), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 429, response = RateLimited), (status = 503, response = Unavailable)))]
pub async fn search(
    State(state): State<AppState>,
    principal: Principal,
    Query(query): Query<HashMap<String, String>>,
) -> Result<ApiJson<SearchResults>, ApiError> {
    principal.require(Role::Operator)?;
    let text = valid_text(
        "q",
        query.get("q").map_or("", String::as_str),
        MAX_SEARCH_CHARS,
    )?;
    state.limits.write(&principal)?;
    Ok(ApiJson(ops::search(&state.rides.sources(), &text).await?))
}

#[utoipa::path(get, path = "/v1/ops/drivers/{id}", tag = "operations", security(("bearer" = [])),
    params(("id" = String, Path, description = "Driver id")),
    responses((status = 200, body = DriverCard), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 503, response = Unavailable)))]
pub async fn driver_card(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<ApiJson<DriverCard>, ApiError> {
    principal.require(Role::Operator)?;
    Ok(ApiJson(
        ops::driver_card(&state.rides.sources(), &id).await?,
    ))
}

#[utoipa::path(get, path = "/v1/ops/trips/{id}/candidates", tag = "operations", security(("bearer" = [])),
    params(("id" = String, Path, description = "Trip id")),
    responses((status = 200, body = Candidates), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 503, response = Unavailable)))]
pub async fn candidates(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<ApiJson<Candidates>, ApiError> {
    principal.require(Role::Operator)?;
    Ok(ApiJson(ops::candidates(&state.rides.sources(), &id).await?))
}

#[utoipa::path(get, path = "/v1/ops/cluster", tag = "operations", security(("bearer" = [])),
    responses((status = 200, body = ClusterView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 503, response = Unavailable)))]
pub async fn cluster(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<ApiJson<ClusterView>, ApiError> {
    principal.require(Role::Operator)?;
    Ok(ApiJson(ops::cluster(&state.rides.store).await?))
}

/// How long a console ticket may wait to be used.
const TICKET_TTL_MS: u64 = 30_000;

#[utoipa::path(post, path = "/v1/ops/tickets", tag = "operations", security(("bearer" = [])),
    responses((status = 201, body = SocketTicket, description = "A single-use ticket for `GET /v1/ops/ws?ticket=`, good for 30 s"),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 503, response = Unavailable)))]
pub async fn ticket(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<(StatusCode, ApiJson<SocketTicket>), ApiError> {
    principal.require(Role::Operator)?;
    let expires_at = crate::trip::Timestamp::now().plus_ms(TICKET_TTL_MS);
    let ticket = state
        .rides
        .store
        .issue_ticket(&principal.id, expires_at)
        .await?;
    Ok((
        StatusCode::CREATED,
        ApiJson(SocketTicket { ticket, expires_at }),
    ))
}

#[utoipa::path(get, path = "/healthz", tag = "service", responses((status = 200, body = Health)))]
pub async fn healthz() -> ApiJson<Health> {
    ApiJson(Health {
        status: "ok".into(),
    })
}

#[utoipa::path(get, path = "/readyz", tag = "service",
    responses((status = 200, body = Readiness, description = "The store answers (the bus may not: see `bus`)"),
              (status = 503, body = Readiness, description = "The store is unreachable")))]
pub async fn readyz(State(state): State<AppState>) -> Response {
    let rides = &state.rides;
    let store = match rides.store.ping().await {
        Ok(()) => DependencyState::Ok,
        Err(error) => {
            tracing::warn!(%error, "not ready");
            DependencyState::Unavailable
        }
    };
    let readiness = Readiness {
        store,
        bus: rides.bus.state(),
        dispatch: if rides.dispatcher.is_leading() {
            DispatchRole::Leader
        } else {
            DispatchRole::Standby
        },
        node: state.node.id.clone(),
    };
    let status = if store == DependencyState::Ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, ApiJson(readiness)).into_response()
}

#[utoipa::path(get, path = "/metrics", tag = "service",
    responses((status = 200, body = String, content_type = "application/openmetrics-text",
               description = "Prometheus metrics, in the OpenMetrics text format")))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    let rides = &state.rides;
    let metrics = &rides.metrics;
    metrics.drivers_online.set(rides.fleet.len() as i64);
    metrics
        .store_connections_in_use
        .set(rides.store.connections_in_use() as i64);
    metrics
        .store_writes_waiting
        .set(rides.store.writes_waiting() as i64);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        rides.metrics.render(),
    )
        .into_response()
}
