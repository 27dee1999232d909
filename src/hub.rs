//! The event hub: fans committed changes out to whoever watches them — a trip's stream
//! subscribers (passenger, driver, operators) and each driver's socket. Callers publish
//! only after the store committed; the hub itself is memory only, so streams resume from
//! the store, never from here alone.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use prometheus_client::metrics::counter::Counter;
use serde::Serialize;
use tokio::sync::{broadcast, mpsc};
use utoipa::ToSchema;

use crate::{
    geometry::LatLng,
    ops::OpsFeed,
    trip::{Money, Timestamp, TripEvent},
};

/// Messages a trip stream subscriber may lag behind by before it re-reads from the store.
pub const TRIP_STREAM_CAPACITY: usize = 64;

/// Messages queued for one driver socket. A driver that far behind is not reading; the
/// newest messages are dropped (offers expire on their own) and counted.
pub const DRIVER_QUEUE_CAPACITY: usize = 64;

/// Why an offer went away before the driver answered it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WithdrawReason {
    Expired,
    Cancelled,
    Taken,
}

/// An offer as the driver receives it.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
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

/// Server → client WebSocket messages (DESIGN §3), tagged by `type`.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    Offer(OfferMessage),
    OfferWithdrawn {
        offer_id: String,
        reason: WithdrawReason,
    },
    TripEvent(TripEvent),
    DriverLocation {
        trip_id: String,
        lat: f64,
        lng: f64,
        at: Timestamp,
    },
    Error {
        code: String,
        message: String,
    },
}

/// What a trip stream subscriber receives live.
#[derive(Debug, Clone)]
pub enum TripMessage {
    Event(Arc<TripEvent>),
    DriverLocation { lat: f64, lng: f64, at: Timestamp },
}

struct DriverChannel {
    connection: u64,
    sender: mpsc::Sender<ServerMessage>,
}

#[derive(Default)]
pub struct Hub {
    /// One broadcast per watched trip, created on first subscribe and dropped with the last
    /// subscriber. A std `Mutex`: held for a map lookup only, never across an await.
    trips: Mutex<HashMap<String, broadcast::Sender<TripMessage>>>,
    /// The socket currently serving each driver; a newer socket replaces an older one.
    drivers: Mutex<HashMap<String, DriverChannel>>,
    next_connection: std::sync::atomic::AtomicU64,
    /// The operator streams' feed: every committed event and every offer.
    pub ops: OpsFeed,
    /// Messages not queued because a driver's queue was full (`/metrics`).
    dropped: Counter,
}

impl Hub {
    /// `dropped` counts messages a driver's full queue could not take.
    pub fn new(dropped: Counter) -> Hub {
        Hub {
            dropped,
            ..Hub::default()
        }
    }

    /// Fans a committed event out to its trip's subscribers and to the drivers it
    /// concerns: the trip's driver, and `previous_driver` if it just lost the trip.
    pub fn publish(&self, event: &TripEvent, previous_driver: Option<&str>) {
        let shared = Arc::new(event.clone());
        if let Some(sender) = self.trips.lock().unwrap().get(&event.trip_id) {
            // No receivers is fine: nobody is watching this trip right now.
            let _ = sender.send(TripMessage::Event(shared.clone()));
        }
        self.ops.event(&shared);
        let current = event.trip.driver_id.as_deref();
        for driver in [current, previous_driver.filter(|d| Some(*d) != current)]
            .into_iter()
            .flatten()
        {
            self.send_to_driver(driver, ServerMessage::TripEvent(event.clone()));
        }
    }

    /// The driver's position, to the passenger watching the trip.
    pub fn publish_driver_location(&self, trip_id: &str, position: LatLng, at: Timestamp) {
        if let Some(sender) = self.trips.lock().unwrap().get(trip_id) {
            let _ = sender.send(TripMessage::DriverLocation {
                lat: position.lat(),
                lng: position.lng(),
                at,
            });
        }
    }

    pub fn subscribe_trip(&self, trip_id: &str) -> broadcast::Receiver<TripMessage> {
        let mut trips = self.trips.lock().unwrap();
        trips
            .entry(trip_id.to_string())
            .or_insert_with(|| broadcast::channel(TRIP_STREAM_CAPACITY).0)
            .subscribe()
    }

    /// Call after dropping a receiver from [`Self::subscribe_trip`].
    pub fn unsubscribe_trip(&self, trip_id: &str) {
        let mut trips = self.trips.lock().unwrap();
        if trips
            .get(trip_id)
            .is_some_and(|sender| sender.receiver_count() == 0)
        {
            trips.remove(trip_id);
        }
    }

    /// Routes a driver's messages to a new socket; returns the connection number to
    /// unregister with and the queue the socket's writer drains.
    pub fn register_driver(&self, driver_id: &str) -> (u64, mpsc::Receiver<ServerMessage>) {
        let connection = self
            .next_connection
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (sender, receiver) = mpsc::channel(DRIVER_QUEUE_CAPACITY);
        // Replacing the sender drops the old one, which ends the old socket's writer.
        self.drivers
            .lock()
            .unwrap()
            .insert(driver_id.to_string(), DriverChannel { connection, sender });
        (connection, receiver)
    }

    pub fn unregister_driver(&self, driver_id: &str, connection: u64) {
        let mut drivers = self.drivers.lock().unwrap();
        if drivers
            .get(driver_id)
            .is_some_and(|channel| channel.connection == connection)
        {
            drivers.remove(driver_id);
        }
    }

    /// Queues a message for a driver's socket. False if the driver has no socket or its
    /// queue is full.
    pub fn send_to_driver(&self, driver_id: &str, message: ServerMessage) -> bool {
        let drivers = self.drivers.lock().unwrap();
        let Some(channel) = drivers.get(driver_id) else {
            return false;
        };
        let sent = channel.sender.try_send(message).is_ok();
        if !sent {
            self.dropped.inc();
        }
        sent
    }
}
