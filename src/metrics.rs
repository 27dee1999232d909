//! Prometheus metrics, served at `/metrics` in the OpenMetrics text format. Counters count
//! what *this node* did (a trip transition is counted by the node that committed it), so
//! summing over the nodes of a cluster gives the cluster's totals.

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use crate::protocol::operators::OfferOutcome;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OfferLabels {
    pub outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransitionLabels {
    pub event: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub location_pings: Counter,
    pub offers: Family<OfferLabels, Counter>,
    pub trip_transitions: Family<TransitionLabels, Counter>,
    /// Seconds from a trip's request (or its return to `requested`) to its first offer.
    pub request_to_offer: Histogram,
    pub drivers_online: Gauge,
    pub sockets_open: Gauge,
    pub driver_messages_dropped: Counter,
    /// 1 while this node holds the dispatch lease.
    pub dispatch_leader: Gauge,
    /// The lease epoch this node last saw (as leader or standby).
    pub dispatch_epoch: Gauge,
    pub bus_published: Counter,
    pub bus_received: Counter,
    /// Notes not published because the outbox was full (the bus is down or slow).
    pub bus_dropped: Counter,
    /// Seconds between a note's sending and its receipt here.
    pub bus_lag: Histogram,
    /// Fares capped at `HAIL_FARE_CAP_FACTOR` × their estimate (flagged for review).
    pub fares_capped: Counter,
    /// Set when scraped: store connections in use, and writes queued for SQLite's one
    /// writer.
    pub store_connections_in_use: Gauge,
    pub store_writes_waiting: Gauge,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("hail");
        let location_pings = Counter::default();
        registry.register(
            "location_pings",
            "Driver location pings accepted",
            location_pings.clone(),
        );
        let offers = Family::<OfferLabels, Counter>::default();
        registry.register("offers", "Offers by outcome", offers.clone());
        let trip_transitions = Family::<TransitionLabels, Counter>::default();
        registry.register(
            "trip_transitions",
            "Committed trip events by event",
            trip_transitions.clone(),
        );
        // 1 ms .. ~16 s, doubling.
        let request_to_offer = Histogram::new([
            0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0,
        ]);
        registry.register(
            "request_to_offer_seconds",
            "Time from a trip becoming requested to its first offer",
            request_to_offer.clone(),
        );
        let drivers_online = Gauge::default();
        registry.register(
            "drivers_online",
            "Drivers in the fleet index",
            drivers_online.clone(),
        );
        let sockets_open = Gauge::default();
        registry.register(
            "sockets_open",
            "Open WebSocket connections",
            sockets_open.clone(),
        );
        let driver_messages_dropped = Counter::default();
        registry.register(
            "driver_messages_dropped",
            "Messages to a driver socket dropped because its queue was full",
            driver_messages_dropped.clone(),
        );
        let dispatch_leader = Gauge::default();
        registry.register(
            "dispatch_leader",
            "1 while this node holds the dispatch lease",
            dispatch_leader.clone(),
        );
        let dispatch_epoch = Gauge::default();
        registry.register(
            "dispatch_epoch",
            "The dispatch lease epoch as this node last saw it",
            dispatch_epoch.clone(),
        );
        let bus_published = Counter::default();
        registry.register(
            "bus_published",
            "Notes published on the bus",
            bus_published.clone(),
        );
        let bus_received = Counter::default();
        registry.register(
            "bus_received",
            "Notes received from other nodes",
            bus_received.clone(),
        );
        let bus_dropped = Counter::default();
        registry.register(
            "bus_dropped",
            "Notes dropped because the bus outbox was full",
            bus_dropped.clone(),
        );
        let bus_lag = Histogram::new([
            0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 5.0,
        ]);
        registry.register(
            "bus_lag_seconds",
            "Time from a note's sending on another node to its receipt here",
            bus_lag.clone(),
        );
        let fares_capped = Counter::default();
        registry.register(
            "fares_capped",
            "Final fares capped at the configured multiple of their estimate",
            fares_capped.clone(),
        );
        let store_connections_in_use = Gauge::default();
        registry.register(
            "store_connections_in_use",
            "Store connections taken by queries (of HAIL_DB_MAX_CONNECTIONS)",
            store_connections_in_use.clone(),
        );
        let store_writes_waiting = Gauge::default();
        registry.register(
            "store_writes_waiting",
            "Writes waiting in this process for SQLite's one writer (0 on PostgreSQL)",
            store_writes_waiting.clone(),
        );
        Metrics {
            store_connections_in_use,
            store_writes_waiting,
            fares_capped,
            registry,
            location_pings,
            offers,
            trip_transitions,
            request_to_offer,
            drivers_online,
            sockets_open,
            driver_messages_dropped,
            dispatch_leader,
            dispatch_epoch,
            bus_published,
            bus_received,
            bus_dropped,
            bus_lag,
        }
    }

    pub fn offer(&self, outcome: OfferOutcome) {
        self.offers
            .get_or_create(&OfferLabels {
                outcome: outcome.as_str(),
            })
            .inc();
    }

    pub fn transition(&self, event: &'static str) {
        self.trip_transitions
            .get_or_create(&TransitionLabels { event })
            .inc();
    }

    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        encode(&mut text, &self.registry).expect("encoding metrics into a String");
        text
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
