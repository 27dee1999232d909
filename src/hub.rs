//! The event hub: fans committed changes out to the sockets of *this node* — a trip's
//! stream subscribers (passenger, driver, operators), each driver's socket, and the
//! operator streams. Callers publish only after the store committed (the commit path in
//! `rides`); the hub itself is memory only, so streams resume from the store, never from
//! here alone. Other nodes' sockets hear of changes through the bus, whose receiver
//! publishes here the same way.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use prometheus_client::metrics::counter::Counter;
use tokio::{
    sync::{broadcast, mpsc},
    time::Instant,
};

use crate::{
    geometry::LatLng,
    protocol::{ServerMessage, operators::OfferLog},
    trip::{Timestamp, TripEvent},
};

/// Messages a trip stream subscriber may lag behind by before it re-reads from the store.
pub const TRIP_STREAM_CAPACITY: usize = 64;

/// Messages queued for one driver socket. A driver that far behind is not reading; the
/// newest messages are dropped (offers expire on their own) and counted.
pub const DRIVER_QUEUE_CAPACITY: usize = 64;

/// Trip events and offers an operator stream may fall behind by before it is resynced.
pub const OPERATOR_STREAM_CAPACITY: usize = 1_024;

/// What a trip stream subscriber receives live.
#[derive(Debug, Clone)]
pub enum TripMessage {
    Event(Arc<TripEvent>),
    DriverLocation { lat: f64, lng: f64, at: Timestamp },
}

/// What an operator stream receives live.
#[derive(Debug, Clone)]
pub enum OperatorMessage {
    Event(Arc<TripEvent>),
    Offer(Arc<OfferLog>),
}

/// What a driver's socket task receives: a message to send, or the order to close because
/// a newer socket of the same driver took over. Boxed: a queue's slots are allocated 32 at
/// a time per driver, so a slot is kept to a pointer's size.
#[derive(Debug)]
pub enum DriverOutbound {
    Send(Box<ServerMessage>),
    Replaced,
}

struct TripWatch {
    sender: broadcast::Sender<TripMessage>,
    /// When the last `driver_location` went out, to send at most one per interval.
    location_sent: Option<Instant>,
}

struct DriverChannel {
    connection: u64,
    sender: mpsc::Sender<DriverOutbound>,
}

pub struct Hub {
    /// One broadcast per watched trip, created on first subscribe and dropped with the last
    /// subscriber. A std `Mutex`: held for a map lookup only, never across an await.
    trips: Mutex<HashMap<String, TripWatch>>,
    /// The socket currently serving each driver on this node; a newer one replaces it.
    drivers: Mutex<HashMap<String, DriverChannel>>,
    next_connection: AtomicU64,
    operators: broadcast::Sender<OperatorMessage>,
    /// Least time between two `driver_location` messages on a trip stream.
    location_interval: Duration,
    /// Messages not queued because a driver's queue was full (`/metrics`).
    dropped: Counter,
}

impl Hub {
    /// `dropped` counts messages a driver's full queue could not take.
    pub fn new(location_interval: Duration, dropped: Counter) -> Hub {
        Hub {
            trips: Mutex::default(),
            drivers: Mutex::default(),
            next_connection: AtomicU64::new(1),
            operators: broadcast::channel(OPERATOR_STREAM_CAPACITY).0,
            location_interval,
            dropped,
        }
    }

    /// Fans a committed event out to its trip's subscribers, the operators, and the drivers
    /// it concerns: the trip's driver, and `previous_driver` if it just lost the trip.
    pub fn publish(&self, event: &Arc<TripEvent>, previous_driver: Option<&str>) {
        if let Some(watch) = self.trips.lock().unwrap().get(&event.trip_id) {
            // No receivers is fine: nobody is watching this trip right now.
            let _ = watch.sender.send(TripMessage::Event(event.clone()));
        }
        let _ = self.operators.send(OperatorMessage::Event(event.clone()));
        let current = event.trip.driver_id.as_deref();
        for driver in [current, previous_driver.filter(|d| Some(*d) != current)]
            .into_iter()
            .flatten()
        {
            self.send_to_driver(driver, ServerMessage::TripEvent((**event).clone()));
        }
    }

    /// An offer's audit log line, to the operators.
    pub fn publish_offer_log(&self, line: OfferLog) {
        let _ = self.operators.send(OperatorMessage::Offer(Arc::new(line)));
    }

    /// The driver's position, to whoever watches the trip: at most one per interval.
    pub fn publish_driver_location(&self, trip_id: &str, position: LatLng, now: Instant) {
        let mut trips = self.trips.lock().unwrap();
        let Some(watch) = trips.get_mut(trip_id) else {
            return;
        };
        if watch
            .location_sent
            .is_some_and(|sent| now.saturating_duration_since(sent) < self.location_interval)
        {
            return;
        }
        watch.location_sent = Some(now);
        let _ = watch.sender.send(TripMessage::DriverLocation {
            lat: position.lat(),
            lng: position.lng(),
            at: Timestamp::now(),
        });
    }

    pub fn subscribe_trip(&self, trip_id: &str) -> broadcast::Receiver<TripMessage> {
        let mut trips = self.trips.lock().unwrap();
        trips
            .entry(trip_id.to_string())
            .or_insert_with(|| TripWatch {
                sender: broadcast::channel(TRIP_STREAM_CAPACITY).0,
                location_sent: None,
            })
            .sender
            .subscribe()
    }

    /// Call after dropping a receiver from [`Self::subscribe_trip`].
    pub fn unsubscribe_trip(&self, trip_id: &str) {
        let mut trips = self.trips.lock().unwrap();
        if trips
            .get(trip_id)
            .is_some_and(|watch| watch.sender.receiver_count() == 0)
        {
            trips.remove(trip_id);
        }
    }

    pub fn subscribe_operators(&self) -> broadcast::Receiver<OperatorMessage> {
        self.operators.subscribe()
    }

    /// Routes a driver's messages to a new socket on this node; the socket it replaces is
    /// told to close. Returns the connection number to unregister with and the queue the
    /// socket's writer drains.
    pub fn register_driver(&self, driver_id: &str) -> (u64, mpsc::Receiver<DriverOutbound>) {
        let connection = self.next_connection.fetch_add(1, Ordering::Relaxed);
        let (sender, receiver) = mpsc::channel(DRIVER_QUEUE_CAPACITY);
        let replaced = self
            .drivers
            .lock()
            .unwrap()
            .insert(driver_id.to_string(), DriverChannel { connection, sender });
        if let Some(old) = replaced {
            let _ = old.sender.try_send(DriverOutbound::Replaced);
        }
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

    /// The driver's socket here is superseded by one on another node: close it.
    pub fn close_driver(&self, driver_id: &str) {
        if let Some(old) = self.drivers.lock().unwrap().remove(driver_id) {
            let _ = old.sender.try_send(DriverOutbound::Replaced);
        }
    }

    /// Queues a message for a driver's socket on this node. False if the driver has no
    /// socket here or its queue is full.
    pub fn send_to_driver(&self, driver_id: &str, message: ServerMessage) -> bool {
        let drivers = self.drivers.lock().unwrap();
        let Some(channel) = drivers.get(driver_id) else {
            return false;
        };
        let sent = channel
            .sender
            .try_send(DriverOutbound::Send(Box::new(message)))
            .is_ok();
        if !sent {
            self.dropped.inc();
        }
        sent
    }

    pub fn has_driver(&self, driver_id: &str) -> bool {
        self.drivers.lock().unwrap().contains_key(driver_id)
    }
}
