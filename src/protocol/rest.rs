//! Bodies of the REST API (DESIGN §3) and the one error format.

use serde::{Deserialize, Serialize};
use utoipa::{ToResponse, ToSchema};

use crate::{geometry::LatLng, trip::Timestamp, trip::TripEvent};

/// Longest name of a passenger or driver, in characters.
pub const MAX_NAME_CHARS: usize = 100;
pub const MAX_PLATE_CHARS: usize = 20;
pub const MAX_REASON_CHARS: usize = 500;
/// Longest `Idempotency-Key`, in visible ASCII characters.
pub const MAX_IDEMPOTENCY_KEY_CHARS: usize = 200;

/// What every free-text field (a name, a plate, a reason) must match, as `/openapi.json`
/// states it: no control character (Unicode `Cc`), and something besides white space
/// (Unicode `White_Space`, which is what `str::trim` removes). Written out in ranges so
/// that ECMAScript and Python read it alike. The server's own check is
/// `gateway::rest::valid_text`; utoipa takes only a literal, so each field repeats it and
/// a test holds them equal.
pub const PRINTABLE_TEXT_PATTERN: &str = r"^[^\u0000-\u001f\u007f-\u009f]*[^\u0000-\u0020\u007f-\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][^\u0000-\u001f\u007f-\u009f]*$";

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PassengerSignup {
    /// 1–100 characters, none a control character and not all white space; white space
    /// around it is trimmed.
    #[schema(
        example = "Minji",
        min_length = 1,
        max_length = 100,
        pattern = r"^[^\u0000-\u001f\u007f-\u009f]*[^\u0000-\u0020\u007f-\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][^\u0000-\u001f\u007f-\u009f]*$"
    )]
    pub name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DriverSignup {
    /// As a passenger's name.
    #[schema(
        example = "Junho",
        min_length = 1,
        max_length = 100,
        pattern = r"^[^\u0000-\u001f\u007f-\u009f]*[^\u0000-\u0020\u007f-\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][^\u0000-\u001f\u007f-\u009f]*$"
    )]
    pub name: String,
    pub vehicle: Vehicle,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Vehicle {
    /// 1–20 characters, as a name.
    #[schema(
        example = "12가3456",
        min_length = 1,
        max_length = 20,
        pattern = r"^[^\u0000-\u001f\u007f-\u009f]*[^\u0000-\u0020\u007f-\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][^\u0000-\u001f\u007f-\u009f]*$"
    )]
    pub plate: String,
}

/// A new account's id and bearer token. The token is shown once; store it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Credentials {
    pub id: String,
    pub token: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TripRequest {
    pub pickup: LatLng,
    pub dropoff: LatLng,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct CancelRequest {
    /// Why, in 1–500 characters as a name; kept in the trip's event. Leave it out (or
    /// null) for no reason.
    #[schema(
        min_length = 1,
        max_length = 500,
        pattern = r"^[^\u0000-\u001f\u007f-\u009f]*[^\u0000-\u0020\u007f-\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][^\u0000-\u001f\u007f-\u009f]*$"
    )]
    pub reason: Option<String>,
}

/// `GET /v1/ops/search?q=`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SearchQuery {
    /// A trip, driver or passenger id (or its start), a driver's name or plate, a
    /// passenger's name.
    #[param(
        min_length = 1,
        max_length = 100,
        pattern = r"^[^\u0000-\u001f\u007f-\u009f]*[^\u0000-\u0020\u007f-\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][^\u0000-\u001f\u007f-\u009f]*$"
    )]
    pub q: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AssignRequest {
    pub driver_id: String,
    /// Why, kept in the trip's event (optional; as a cancel's reason).
    #[serde(default)]
    #[schema(
        min_length = 1,
        max_length = 500,
        pattern = r"^[^\u0000-\u001f\u007f-\u009f]*[^\u0000-\u0020\u007f-\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][^\u0000-\u001f\u007f-\u009f]*$"
    )]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EventsPage {
    pub events: Vec<TripEvent>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Health {
    pub status: String,
}

/// State of one dependency in `/readyz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DependencyState {
    Ok,
    Unavailable,
    /// Not used by this node (one node with its in-process bus).
    NotConfigured,
}

/// `/readyz`: each dependency by name; 503 only while the store is unreachable, since
/// without the bus REST and the store still work.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Readiness {
    pub store: DependencyState,
    pub bus: DependencyState,
    /// Whether this node leads dispatch, stands by, or has no lease yet.
    pub dispatch: DispatchRole,
    pub node: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DispatchRole {
    Leader,
    Standby,
}

/// `GET /v1/ops/cluster`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ClusterView {
    /// The dispatch lease's epoch: it grows by one at every change of leader.
    pub epoch: i64,
    /// The node holding an unexpired dispatch lease, if any.
    pub leader: Option<String>,
    pub nodes: Vec<NodeView>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NodeView {
    pub id: String,
    /// Where clients reach it (`HAIL_ADVERTISE_URL`).
    pub url: String,
    pub leader: bool,
    pub drivers_connected: i64,
    pub sockets: i64,
    pub last_seen: Timestamp,
}

/// `POST /v1/ops/tickets`: opens one operator stream (`/v1/ops/ws?ticket=`), once, within
/// 30 s — so the browser console never puts its long-lived token in a URL.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SocketTicket {
    pub ticket: String,
    pub expires_at: Timestamp,
}

/// 429 `rate_limited`: too many requests of this kind from this client; nothing was
/// changed.
#[derive(ToResponse)]
#[response(headers(("Retry-After" = u64, description = "Seconds until a retry may succeed")))]
#[expect(
    dead_code,
    reason = "a shape for the OpenAPI document; ApiError writes it"
)]
pub struct RateLimited(ErrorBody);

/// 503 `unavailable`: the store is unreachable or too busy; nothing was changed.
#[derive(ToResponse)]
#[response(headers(("Retry-After" = u64, description = "Seconds until a retry may succeed")))]
#[expect(
    dead_code,
    reason = "a shape for the OpenAPI document; ApiError writes it"
)]
pub struct Unavailable(ErrorBody);

/// Every error: `{"error": {"code", "message"}}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    pub code: ErrorCode,
    pub message: String,
}

/// Every error code a client may see, stable and snake_case. The HTTP status each one
/// goes with is decided in one place: the `error` module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    // 400
    MalformedJson,
    InvalidBody,
    InvalidAfter,
    InvalidCoordinates,
    InvalidIdempotencyKey,
    InvalidMessage,
    MessageTooLarge,
    UnsupportedFrame,
    /// A WebSocket handshake the server cannot take (not a GET upgrade, headers missing).
    InvalidUpgrade,
    // 401, 403, 404, 405
    Unauthorized,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    // 426
    UpgradeRequired,
    // 409
    InvalidTransition,
    OfferExpired,
    OfferAlreadyAnswered,
    ActiveTripExists,
    DriverBusy,
    DriverUnavailable,
    IdempotencyKeyReused,
    /// Ending a ride under way (an operator's cancel or completion) needs a `reason`.
    ReasonRequired,
    // 413, 429
    PayloadTooLarge,
    RateLimited,
    TooManySockets,
    // 500, 503
    Internal,
    Unavailable,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::MalformedJson => "malformed_json",
            ErrorCode::InvalidBody => "invalid_body",
            ErrorCode::InvalidAfter => "invalid_after",
            ErrorCode::InvalidCoordinates => "invalid_coordinates",
            ErrorCode::InvalidIdempotencyKey => "invalid_idempotency_key",
            ErrorCode::InvalidMessage => "invalid_message",
            ErrorCode::MessageTooLarge => "message_too_large",
            ErrorCode::UnsupportedFrame => "unsupported_frame",
            ErrorCode::InvalidUpgrade => "invalid_upgrade",
            ErrorCode::UpgradeRequired => "upgrade_required",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::InvalidTransition => "invalid_transition",
            ErrorCode::OfferExpired => "offer_expired",
            ErrorCode::OfferAlreadyAnswered => "offer_already_answered",
            ErrorCode::ActiveTripExists => "active_trip_exists",
            ErrorCode::DriverBusy => "driver_busy",
            ErrorCode::DriverUnavailable => "driver_unavailable",
            ErrorCode::IdempotencyKeyReused => "idempotency_key_reused",
            ErrorCode::ReasonRequired => "reason_required",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::TooManySockets => "too_many_sockets",
            ErrorCode::Internal => "internal",
            ErrorCode::Unavailable => "unavailable",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
