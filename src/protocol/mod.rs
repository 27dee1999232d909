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
    /// Reads a message from a driver's socket, exactly as the tagged enum's derived
    /// `Deserialize` does. A location ping — nearly every message — is read straight into
    /// its fields (the tagged enum first buffers the whole object to find its tag); any
    /// other message, or any text that read refuses, goes through the enum, so every
    /// answer and every error is the enum's.
    pub fn from_json(text: &str) -> Result<DriverMessage, serde_json::Error> {
        #[derive(Deserialize)]
        struct Location<'a> {
            #[serde(rename = "type", borrow)]
            kind: &'a str,
            lat: f64,
            lng: f64,
            heading_deg: Option<f64>,
            speed_mps: Option<f64>,
        }
        if let Ok(ping) = serde_json::from_str::<Location<'_>>(text)
            && ping.kind == "location"
        {
            return Ok(DriverMessage::Location {
                lat: ping.lat,
                lng: ping.lng,
                heading_deg: ping.heading_deg,
                speed_mps: ping.speed_mps,
            });
        }
        serde_json::from_str(text)
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    /// `from_json` answers every text as the derived `Deserialize` does: the same message,
    /// or an error of the same kind and text.
    #[test]
    fn driver_messages_read_as_the_tagged_enum_reads_them() {
        let texts = [
            r#"{"type":"location","lat":37.5,"lng":127.0}"#,
            r#"{"lat":37.5,"lng":127.0,"type":"location","heading_deg":90.5,"speed_mps":3}"#,
            r#"{"type":"location","lat":37,"lng":-127,"heading_deg":null,"extra":[1,{"a":2}]}"#,
            r#"{"type":"location","lat":37.5,"lng":127.0,"status":"available"}"#,
            r#"{"type":"loc\u0061tion","lat":1,"lng":2}"#,
            r#"{"type":"location","lat":1,"lat":2,"lng":3}"#,
            r#"{"type":"location","type":"location","lat":1,"lng":2}"#,
            r#"{"type":"location","lat":"1","lng":2}"#,
            r#"{"type":"location","lat":1e400,"lng":2}"#,
            r#"{"type":"location","lng":2}"#,
            r#"{"type":"location","lat":1,"lng":2} x"#,
            r#"{"type":"Location","lat":1,"lng":2}"#,
            r#"{"type":"status","status":"available"}"#,
            r#"{"type":"status","status":"offline","lat":1,"lng":2}"#,
            r#"{"type":"status"}"#,
            r#"{"lat":1,"lng":2}"#,
            r#"{"type":null,"lat":1,"lng":2}"#,
            r#"[1,2]"#,
            r#"{"type":"location","lat":1,"lng":2"#,
            "",
            "null",
        ];
        for text in texts {
            let tagged = serde_json::from_str::<DriverMessage>(text);
            let read = DriverMessage::from_json(text);
            match (&tagged, &read) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "{text}"),
                (Err(a), Err(b)) => {
                    assert_eq!(a.classify(), b.classify(), "{text}");
                    assert_eq!(a.to_string(), b.to_string(), "{text}");
                }
                _ => panic!("{text}: tagged {tagged:?}, read {read:?}"),
            }
        }
    }
}
