//! What operators see: the snapshot (`GET /v1/ops/snapshot`), the figures, the dispatch
//! audit log, and the messages of the `/v1/ops/ws` stream.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{
    geometry::LatLng,
    trip::{Timestamp, Trip, TripEvent},
};

/// What the driver asked to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DriverStatus {
    Available,
    Offline,
}

/// What an operator sees of a driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DriverState {
    /// Dispatchable.
    Available,
    /// Holds an open offer.
    Offered,
    /// Holds an active trip.
    Busy,
    /// Online but said it is not taking rides.
    Offline,
    /// No ping for longer than the staleness limit, or no live socket.
    Stale,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DriverView {
    pub id: String,
    pub state: DriverState,
    pub status: DriverStatus,
    pub position: Option<LatLng>,
    pub heading_deg: Option<f64>,
    pub trip_id: Option<String>,
    pub offer_id: Option<String>,
    /// Whether the driver has a live socket (on any node).
    pub connected: bool,
    /// The node holding the driver's socket.
    pub node: Option<String>,
    /// When the driver was last heard from (a ping, a status, its socket opening).
    pub last_ping_at: Timestamp,
}

/// A driver as the live stream sends it: `[id, state, lat, lng, trip_id]`, positions
/// rounded to about a metre.
pub type CompactDriver = (
    String,
    DriverState,
    Option<f64>,
    Option<f64>,
    Option<String>,
);

impl DriverView {
    pub fn compact(self) -> CompactDriver {
        let round = |x: f64| (x * 1e5).round() / 1e5;
        (
            self.id,
            self.state,
            self.position.map(|p| round(p.lat())),
            self.position.map(|p| round(p.lng())),
            self.trip_id,
        )
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Stats {
    pub drivers_online: usize,
    pub drivers_available: usize,
    pub drivers_offered: usize,
    pub drivers_busy: usize,
    pub drivers_stale: usize,
    pub drivers_offline: usize,
    /// Trips waiting for a driver.
    pub trips_requested: usize,
    /// Trips with a driver attached.
    pub trips_active: usize,
}

impl Stats {
    /// Counts drivers by state.
    pub fn count(&mut self, state: DriverState) {
        self.drivers_online += 1;
        *match state {
            DriverState::Available => &mut self.drivers_available,
            DriverState::Offered => &mut self.drivers_offered,
            DriverState::Busy => &mut self.drivers_busy,
            DriverState::Stale => &mut self.drivers_stale,
            DriverState::Offline => &mut self.drivers_offline,
        } += 1;
    }
}

/// What became of an offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OfferOutcome {
    Made,
    Accepted,
    Declined,
    /// The driver let it lapse.
    Expired,
    /// Taken back: the trip was cancelled, taken or expired, or the driver went away.
    Withdrawn,
}

impl OfferOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            OfferOutcome::Made => "made",
            OfferOutcome::Accepted => "accepted",
            OfferOutcome::Declined => "declined",
            OfferOutcome::Expired => "expired",
            OfferOutcome::Withdrawn => "withdrawn",
        }
    }
}

/// One line of the dispatch audit log: who was offered which trip, why, and what came of
/// it. The ranking inputs are set on `made`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct OfferLog {
    pub offer_id: String,
    pub trip_id: String,
    pub driver_id: String,
    pub outcome: OfferOutcome,
    pub pickup_distance_m: Option<f64>,
    pub pickup_eta_s: Option<f64>,
    /// 1 = the best-ranked candidate.
    pub rank: Option<u32>,
    /// How many candidates were ranked.
    pub candidates: Option<u32>,
    /// The search radius the candidates came from.
    pub radius_m: Option<f64>,
    pub at: Timestamp,
}

/// Trips and offers of one minute.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Minute {
    /// Start of the minute.
    pub at: Timestamp,
    pub requested: u32,
    pub accepted: u32,
    pub completed: u32,
    pub cancelled: u32,
    pub expired: u32,
    pub offers_made: u32,
    pub offers_accepted: u32,
    pub offers_declined: u32,
    pub offers_lapsed: u32,
}

/// The console's figures at a glance: the last 30 minutes at most, read back from the
/// store when a node starts, so a restart does not zero them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Figures {
    /// Over the last 15 minutes.
    pub requested: u32,
    pub completed: u32,
    pub cancelled: u32,
    pub expired: u32,
    /// Seconds from request to acceptance, last 15 minutes.
    pub accept_p50_s: Option<f64>,
    pub accept_p95_s: Option<f64>,
    /// Accepted offers over answered or lapsed ones, last 15 minutes.
    pub acceptance_rate: Option<f64>,
    /// One entry per minute, oldest first, up to 30.
    pub trend: Vec<Minute>,
}

/// Everything an operator sees at once.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Snapshot {
    pub drivers: Vec<DriverView>,
    /// Every non-terminal trip, then the most recent terminal ones (up to 1,000).
    pub trips: Vec<Trip>,
    pub stats: Stats,
    pub figures: Figures,
    /// The most recent offers, one line each with its latest outcome, oldest first.
    pub offers: Vec<OfferLog>,
    /// Rides under way that need an operator.
    pub flags: Vec<TripFlag>,
    /// The dispatch numbers, for countdowns and ETAs.
    pub policy: Policy,
}

/// A trip an operator must look at, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TripFlag {
    pub trip_id: String,
    /// `driver_lost`: the ride is under way and its driver vanished.
    pub flag: String,
    pub at: Timestamp,
    pub reason: Option<String>,
}

/// The dispatch policy in force (DESIGN §4).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Policy {
    pub offer_timeout_ms: u64,
    /// A trip expires this long after it was requested.
    pub dispatch_deadline_ms: u64,
    pub search_radii_m: Vec<f64>,
    pub stale_after_ms: u64,
    pub driver_lost_after_ms: u64,
    /// Pickup ETA = straight line × `detour_factor` / `urban_speed_mps`.
    pub detour_factor: f64,
    pub urban_speed_mps: f64,
}

/// A driver's account and where it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DriverCard {
    pub id: String,
    pub name: String,
    pub plate: Option<String>,
    /// `null` when the driver is not online.
    pub online: Option<DriverView>,
    /// The driver's active trip, if any.
    pub trip: Option<Trip>,
}

/// A passenger as a search finds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PassengerCard {
    pub id: String,
    pub name: String,
}

/// `GET /v1/ops/search?q=`: trips, drivers and passengers matching the text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SearchResults {
    pub trips: Vec<Trip>,
    pub drivers: Vec<DriverCard>,
    pub passengers: Vec<PassengerCard>,
}

/// A driver an operator may assign a trip to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CandidateView {
    pub driver_id: String,
    pub name: String,
    pub plate: Option<String>,
    pub state: DriverState,
    pub position: LatLng,
    pub distance_m: f64,
    pub eta_s: f64,
    /// Why dispatch will not offer this trip to the driver again (`declined`,
    /// `offer_lapsed`, `driver_cancelled`, `driver_lost`); assigning is still allowed.
    pub excluded: Option<String>,
}

/// `GET /v1/ops/trips/{id}/candidates`: nearest pickup ETA first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Candidates {
    pub trip_id: String,
    pub candidates: Vec<CandidateView>,
}

/// `/v1/ops/ws` messages, tagged by `type`: a snapshot first, then deltas.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OpsMessage {
    Snapshot(Snapshot),
    /// Moved or changed drivers, and drivers gone offline.
    Drivers {
        #[schema(value_type = Vec<Vec<serde_json::Value>>)]
        drivers: Vec<CompactDriver>,
        removed: Vec<String>,
    },
    TripEvent(TripEvent),
    Offer(OfferLog),
    Figures {
        stats: Stats,
        figures: Figures,
    },
    Error {
        code: super::ErrorCode,
        message: String,
    },
}
