//! The wire protocol, in one typed home (DESIGN §3): every message on every socket and
//! every REST body, `Serialize + Deserialize`, read and written alike by the server,
//! `hail sim` and the tests. Trips and events are domain types from [`crate::trip`];
//! positions are [`crate::geometry::LatLng`].
//!
//! - this module: the driver socket and the trip stream;
//! - [`rest`]: request and response bodies of the REST API, and the error format;
//! - [`operators`]: the operator's snapshot, figures and `/v1/ops/ws` stream.

pub mod operators;
pub mod rest;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub use operators::{DriverState, DriverStatus};
pub use rest::ErrorCode;

use crate::{
    geometry::LatLng,
    trip::{Money, Timestamp, TripEvent},
};

/// Largest message a client may send on a socket. A location ping is about 100 bytes.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024;
/// Frames beyond this close the socket with 1009 (message too big); between the two a
/// message gets an error reply and the socket stays open.
pub const MAX_FRAME_BYTES: usize = 16 * 1024;

/// Close codes hail's sockets end with, besides the standard ones (1000 normal, 1001 going
/// away, 1009 too big, 1013 try again later).
pub mod close_code {
    /// A newer socket of the same driver took over (on this node or another).
    pub const REPLACED: u16 = 4001;
    /// A driver's trip stream ends: the trip went to someone else.
    pub const NO_LONGER_YOURS: u16 = 4002;
}

/// What a driver sends on `/v1/driver/ws`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum DriverMessage {
    /// Where the driver is. Coordinates are checked by the server (an `error` with
    /// `invalid_coordinates` answers bad ones), so they are plain numbers here.
    Location {
        lat: f64,
        lng: f64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        heading_deg: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        speed_mps: Option<f64>,
    },
    /// Whether the driver takes rides.
    Status { status: DriverStatus },
}

impl DriverMessage {
    pub fn location(position: LatLng) -> DriverMessage {
        DriverMessage::Location {
            lat: position.lat(),
            lng: position.lng(),
            heading_deg: None,
            speed_mps: None,
        }
    }
}

/// Why an offer went away before the driver answered it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WithdrawReason {
    Expired,
    Cancelled,
    Taken,
}

impl WithdrawReason {
    pub fn as_str(self) -> &'static str {
        match self {
            WithdrawReason::Expired => "expired",
            WithdrawReason::Cancelled => "cancelled",
            WithdrawReason::Taken => "taken",
        }
    }

    pub fn parse(text: &str) -> Option<WithdrawReason> {
        [
            WithdrawReason::Expired,
            WithdrawReason::Cancelled,
            WithdrawReason::Taken,
        ]
        .into_iter()
        .find(|reason| reason.as_str() == text)
    }
}

/// An offer as the driver receives it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct OfferMessage {
    pub offer_id: String,
    pub trip_id: String,
    pub pickup: LatLng,
    pub dropoff: LatLng,
    pub pickup_distance_m: f64,
    pub pickup_eta_s: f64,
    pub fare_estimate: Money,
    pub expires_at: Timestamp,
}

/// Server → client messages on the driver socket and the trip stream, tagged by `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    Offer(OfferMessage),
    OfferWithdrawn {
        offer_id: String,
        reason: WithdrawReason,
    },
    TripEvent(TripEvent),
    /// The driver's position, to whoever watches its trip (no seq: ephemeral).
    DriverLocation {
        trip_id: String,
        lat: f64,
        lng: f64,
        at: Timestamp,
    },
    /// A message the server could not act on; the socket stays open.
    Error {
        code: ErrorCode,
        message: String,
    },
}

impl ServerMessage {
    /// The JSON text frame. Serializing our own types cannot fail: no maps with
    /// non-string keys, no non-finite floats reach here.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("server messages serialize")
    }
}
