//! The trip state machine, fares, and the shapes of trips and events on the wire. Pure: no
//! I/O. The store persists what [`Trip::apply`] decides; nothing else changes a trip.
//!
//! ```text
//! requested ──accepted──► accepted ──arrived──► arrived ──started──► in_progress ──completed──► completed
//!     │  ▲                   │                     │
//!     │  └─driver_cancelled──┘ (back to requested, that driver excluded, re-dispatched)
//!     ├──cancelled──► cancelled     (passenger or operator; also from accepted/arrived)
//!     └──expired────► expired       (no driver accepted before the dispatch deadline)
//! ```
//!
//! Two more ways out, for trips whose driver vanished (DESIGN §2):
//!
//! - `driver_lost`: the driver had no socket and no ping for `HAIL_DRIVER_LOST_AFTER_MS`.
//!   Before pickup the trip goes back to `requested` (like `driver_cancelled`, by hail
//!   itself); after pickup it stays `in_progress` — the event is a flag for operators,
//!   since nobody else can know where the passenger is.
//! - An operator may cancel a trip in any active state, `in_progress` included, or
//!   complete an `in_progress` one at its estimate: the resolution of a stuck ride.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::geometry::LatLng;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TripState {
    Requested,
    Accepted,
    Arrived,
    InProgress,
    Completed,
    Cancelled,
    Expired,
}

impl TripState {
    pub const ALL: [TripState; 7] = [
        TripState::Requested,
        TripState::Accepted,
        TripState::Arrived,
        TripState::InProgress,
        TripState::Completed,
        TripState::Cancelled,
        TripState::Expired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TripState::Requested => "requested",
            TripState::Accepted => "accepted",
            TripState::Arrived => "arrived",
            TripState::InProgress => "in_progress",
            TripState::Completed => "completed",
            TripState::Cancelled => "cancelled",
            TripState::Expired => "expired",
        }
    }

    pub fn parse(text: &str) -> Option<TripState> {
        TripState::ALL
            .into_iter()
            .find(|state| state.as_str() == text)
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TripState::Completed | TripState::Cancelled | TripState::Expired
        )
    }

    /// A driver is attached (the partial unique index `trips_one_active_per_driver` covers
    /// exactly these states).
    pub fn has_driver(self) -> bool {
        matches!(
            self,
            TripState::Accepted | TripState::Arrived | TripState::InProgress
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Requested,
    Accepted,
    Arrived,
    Started,
    Completed,
    Cancelled,
    DriverCancelled,
    Expired,
    /// The driver vanished: before pickup the trip is dispatched again; after pickup the
    /// trip stays `in_progress`, flagged for operators.
    DriverLost,
}

impl EventKind {
    pub const ALL: [EventKind; 9] = [
        EventKind::Requested,
        EventKind::Accepted,
        EventKind::Arrived,
        EventKind::Started,
        EventKind::Completed,
        EventKind::Cancelled,
        EventKind::DriverCancelled,
        EventKind::Expired,
        EventKind::DriverLost,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Requested => "requested",
            EventKind::Accepted => "accepted",
            EventKind::Arrived => "arrived",
            EventKind::Started => "started",
            EventKind::Completed => "completed",
            EventKind::Cancelled => "cancelled",
            EventKind::DriverCancelled => "driver_cancelled",
            EventKind::Expired => "expired",
            EventKind::DriverLost => "driver_lost",
        }
    }

    pub fn parse(text: &str) -> Option<EventKind> {
        EventKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == text)
    }
}

/// Milliseconds since the Unix epoch; on the wire an RFC 3339 UTC string.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, ToSchema)]
#[schema(value_type = String, format = DateTime, example = "2026-11-24T09:30:00.000Z")]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub fn now() -> Timestamp {
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp(since_epoch.as_millis() as i64)
    }

    /// The wall-clock time of a monotonic instant: `Timestamp::at(Instant::now())` is
    /// `Timestamp::now()`. Code that takes time as a parameter (so tests can drive it by
    /// hand) derives its wall-clock stamps from that parameter with this, so the two
    /// clocks never disagree. The anchor between them is re-taken whenever the system's
    /// wall clock has moved against the monotonic one (NTP steps) by more than 250 ms.
    pub fn at(instant: tokio::time::Instant) -> Timestamp {
        static ANCHOR: std::sync::Mutex<Option<(std::time::Instant, i64)>> =
            std::sync::Mutex::new(None);
        let (real_now, wall_now) = (std::time::Instant::now(), Timestamp::now().0);
        let mut anchor = ANCHOR
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let (at_instant, at_wall) = match *anchor {
            Some((at_instant, at_wall))
                if (at_wall + real_now.duration_since(at_instant).as_millis() as i64
                    - wall_now)
                    .abs()
                    <= 250 =>
            {
                (at_instant, at_wall)
            }
            _ => {
                *anchor = Some((real_now, wall_now));
                (real_now, wall_now)
            }
        };
        drop(anchor);
        let instant = instant.into_std();
        let nanos = if instant >= at_instant {
            instant.duration_since(at_instant).as_nanos() as i128
        } else {
            -(at_instant.duration_since(instant).as_nanos() as i128)
        };
        // Floor on both sides of the anchor, so equal spans map to equal spans.
        Timestamp(at_wall + nanos.div_euclid(1_000_000) as i64)
    }

    pub fn millis(self) -> i64 {
        self.0
    }

    pub fn plus_ms(self, ms: u64) -> Timestamp {
        Timestamp(self.0.saturating_add(ms as i64))
    }

    pub fn to_rfc3339(self) -> String {
        let nanos = i128::from(self.0) * 1_000_000;
        let format = time::macros::format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
        );
        time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
            .ok()
            .and_then(|at| at.format(&format).ok())
            .unwrap_or_default()
    }
}

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_rfc3339())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let at = time::OffsetDateTime::parse(&text, &time::format_description::well_known::Rfc3339)
            .map_err(serde::de::Error::custom)?;
        Ok(Timestamp((at.unix_timestamp_nanos() / 1_000_000) as i64))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Money {
    /// In the currency's minor unit as used by riders (KRW has none: whole won).
    pub amount: i64,
    #[schema(example = "KRW")]
    pub currency: String,
}

/// A trip as clients see it (DESIGN §3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Trip {
    pub id: String,
    pub state: TripState,
    /// Version: the seq of the last event. Gapless from 1.
    pub seq: i64,
    pub passenger_id: String,
    pub driver_id: Option<String>,
    pub pickup: LatLng,
    pub dropoff: LatLng,
    pub fare_estimate: Money,
    pub fare: Option<Money>,
    pub requested_at: Timestamp,
    pub updated_at: Timestamp,
}

/// Who may act: an account's role, or hail itself (dispatch, expiry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Passenger,
    Driver,
    Operator,
    System,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Passenger => "passenger",
            Role::Driver => "driver",
            Role::Operator => "operator",
            Role::System => "system",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        [Role::Passenger, Role::Driver, Role::Operator, Role::System]
            .into_iter()
            .find(|role| role.as_str() == text)
    }
}

/// Who caused an event: `{"role": "operator", "id": "op_…"}`; hail itself has no id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Actor {
    pub role: Role,
    pub id: Option<String>,
}

impl Actor {
    pub fn new(role: Role, id: impl Into<String>) -> Actor {
        Actor {
            role,
            id: Some(id.into()),
        }
    }

    pub fn system() -> Actor {
        Actor {
            role: Role::System,
            id: None,
        }
    }
}

/// One committed change of a trip, with the trip as it was after it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TripEvent {
    pub trip_id: String,
    pub seq: i64,
    pub event: EventKind,
    pub at: Timestamp,
    /// Who caused it.
    pub actor: Actor,
    /// Why, when someone said (a cancel's reason), or what the system saw.
    pub reason: Option<String>,
    pub trip: Trip,
}

/// What someone asks to happen to a trip. Carries what the new state needs.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Accept {
        driver_id: String,
    },
    Arrive,
    Start,
    Complete {
        fare: Money,
    },
    /// Passenger or operator cancels, before pickup.
    Cancel,
    /// An operator ends a trip in any active state, after pickup included.
    Void,
    /// The assigned driver gives the trip back before pickup.
    DriverCancel,
    Expire,
    /// hail noticed the driver is gone (see the module's doc).
    DriverLost,
}

impl Change {
    pub fn event_kind(&self) -> EventKind {
        match self {
            Change::Accept { .. } => EventKind::Accepted,
            Change::Arrive => EventKind::Arrived,
            Change::Start => EventKind::Started,
            Change::Complete { .. } => EventKind::Completed,
            Change::Cancel | Change::Void => EventKind::Cancelled,
            Change::DriverLost => EventKind::DriverLost,
            Change::DriverCancel => EventKind::DriverCancelled,
            Change::Expire => EventKind::Expired,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a trip that is {from} cannot be {event}")]
pub struct InvalidTransition {
    pub from: &'static str,
    pub event: &'static str,
}

impl Trip {
    /// The trip after `change`, or why the change is not allowed from the current state.
    /// This is the only place that knows the state diagram.
    pub fn apply(&self, change: &Change, at: Timestamp) -> Result<Trip, InvalidTransition> {
        use TripState::*;
        let invalid = || InvalidTransition {
            from: self.state.as_str(),
            event: change.event_kind().as_str(),
        };
        let mut next = self.clone();
        match (self.state, change) {
            (Requested, Change::Accept { driver_id }) => {
                next.state = Accepted;
                next.driver_id = Some(driver_id.clone());
            }
            (Accepted, Change::Arrive) => next.state = Arrived,
            (Arrived, Change::Start) => next.state = InProgress,
            (InProgress, Change::Complete { fare }) => {
                next.state = Completed;
                next.fare = Some(fare.clone());
            }
            (Requested | Accepted | Arrived, Change::Cancel)
            | (Requested | Accepted | Arrived | InProgress, Change::Void) => next.state = Cancelled,
            (Accepted | Arrived, Change::DriverCancel | Change::DriverLost) => {
                next.state = Requested;
                next.driver_id = None;
            }
            // A flag: the ride goes on as far as anyone can tell.
            (InProgress, Change::DriverLost) => {}
            (Requested, Change::Expire) => next.state = Expired,
            _ => return Err(invalid()),
        }
        next.seq = self.seq + 1;
        next.updated_at = at;
        debug_assert!(!next.state.has_driver() || next.driver_id.is_some());
        Ok(next)
    }
}

/// Tariff: base + per km + per minute. Amounts in whole currency units.
#[derive(Debug, Clone, PartialEq)]
pub struct Tariff {
    pub base: i64,
    pub per_km: i64,
    pub per_minute: i64,
    pub currency: String,
}

impl Tariff {
    pub fn fare(&self, distance_m: f64, duration_s: f64) -> Money {
        let distance_part = self.per_km as f64 * distance_m.max(0.0) / 1_000.0;
        let time_part = self.per_minute as f64 * duration_s.max(0.0) / 60.0;
        // Round to the nearest 100 won the way Korean meters do; other currencies to 1.
        let granularity = if self.currency == "KRW" { 100.0 } else { 1.0 };
        let total = self.base as f64 + distance_part + time_part;
        Money {
            amount: ((total / granularity).round() * granularity) as i64,
            currency: self.currency.clone(),
        }
    }
}

#[cfg(test)]
mod tests;
