//! Ride operations: what each request means, start to finish — check who asks, commit the
//! change in the store, then bring everything in memory up to date and tell whoever
//! watches. The gateways call these ([`operations`], [`drivers`]); so do tests that drive
//! time by hand.
//!
//! **One commit path.** Every committed change — a trip transition whoever caused it
//! (REST, an accepted offer, an expiry, an operator), an offer made or closed — becomes a
//! [`Note`] and goes through [`Rides::commit`]: applied here (fleet, dispatcher, figures,
//! local sockets), then published on the bus for the other nodes, which apply the very same
//! note with [`Rides::receive`]. Nothing is told before the store committed (invariant 3)
//! because nothing reaches `commit` before that.

pub mod drivers;
pub mod operations;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use tokio::time::Instant;

use crate::{
    bus::{Bus, Envelope, NODE_SILENT_AFTER, Note},
    config::{DispatchConfig, ServerConfig},
    dispatch::{Announce, Dispatcher},
    fleet::Fleet,
    hub::Hub,
    metrics::Metrics,
    ops::Tally,
    protocol::{OfferMessage, ServerMessage, operators::OfferOutcome},
    store::{ClosedOffer, NewOffer, Store, Transition},
    trip::{EventKind, Tariff, Timestamp, TripEvent, TripState},
};

/// Everything a ride operation touches. Shared behind an `Arc`.
pub struct Rides {
    pub store: Store,
    pub fleet: Arc<Fleet>,
    pub dispatcher: Arc<Dispatcher>,
    pub hub: Arc<Hub>,
    pub bus: Bus,
    pub metrics: Arc<Metrics>,
    pub tally: Tally,
    pub config: DispatchConfig,
    pub tariff: Tariff,
    /// A final fare is at most this many times its estimate (`HAIL_FARE_CAP_FACTOR`).
    pub fare_cap_factor: f64,
    /// When each other node was last heard on the bus, and its incarnation. A std
    /// `Mutex`: one map operation.
    nodes_heard: Mutex<HashMap<Arc<str>, (Instant, Timestamp)>>,
}

/// Where a note comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// Committed by this node: count it in this node's metrics and publish it.
    Here,
    Elsewhere,
}

impl Rides {
    pub fn new(
        store: Store,
        fleet: Arc<Fleet>,
        dispatcher: Arc<Dispatcher>,
        hub: Arc<Hub>,
        bus: Bus,
        metrics: Arc<Metrics>,
        config: &ServerConfig,
    ) -> Rides {
        Rides {
            store,
            fleet,
            dispatcher,
            hub,
            bus,
            metrics,
            tally: Tally::default(),
            config: config.dispatch.clone(),
            tariff: config.tariff.tariff(),
            fare_cap_factor: config.limits.fare_cap_factor,
            nodes_heard: Mutex::default(),
        }
    }

    /// What the operators' views read (`ops`).
    pub fn sources(&self) -> crate::ops::Sources<'_> {
        crate::ops::Sources {
            store: &self.store,
            fleet: &self.fleet,
            tally: &self.tally,
            config: &self.config,
        }
    }

    /// The commit path: applies a committed change here, then tells the other nodes.
    pub fn commit(&self, note: Note) {
        self.apply(&note, Origin::Here);
        self.bus.publish(note);
    }

    /// A trip transition, committed.
    fn committed(&self, transition: &Transition) {
        self.commit(Note::Trip {
            event: transition.event.clone(),
            previous_driver: transition.before.driver_id.clone(),
            closed_offers: transition.closed_offers.clone(),
        });
    }

    /// A note another node published.
    pub fn receive(&self, envelope: Envelope, now: Instant) {
        let node: Arc<str> = Arc::from(envelope.node.as_str());
        let previous = self
            .nodes_heard
            .lock()
            .unwrap()
            .insert(node.clone(), (now, envelope.incarnation));
        if previous.is_some_and(|(_, incarnation)| incarnation != envelope.incarnation) {
            // The node restarted (faster than it could be missed): the sockets its
            // predecessor held are gone; drivers that reconnect to it say so again.
            let lost = self.fleet.node_lost(&node);
            tracing::info!(%node, drivers = lost.len(), "node restarted");
        }
        match &envelope.note {
            Note::Fleet { records } => {
                let applied = self.fleet.apply_records(&node, records, now);
                if applied.gained {
                    self.dispatcher.driver_available();
                }
                for record in records {
                    if record.gone || record.status == crate::fleet::DriverStatus::Offline {
                        self.dispatcher.driver_unavailable(&record.driver_id);
                    }
                }
                for driver_id in &applied.superseded {
                    self.hub.close_driver(driver_id);
                }
                for (trip_id, position) in &applied.moved_on_trip {
                    self.hub.publish_driver_location(trip_id, *position, now);
                }
            }
            note => self.apply(note, Origin::Elsewhere),
        }
    }

    /// Nodes not heard from for [`NODE_SILENT_AFTER`]: their drivers have no live socket
    /// as far as this node knows, so dispatch skips them until they show up again.
    pub fn forget_silent_nodes(&self, now: Instant) {
        let silent: Vec<Arc<str>> = {
            let mut heard = self.nodes_heard.lock().unwrap();
            let silent = heard
                .iter()
                .filter(|(_, (at, _))| now.saturating_duration_since(*at) > NODE_SILENT_AFTER)
                .map(|(node, _)| node.clone())
                .collect::<Vec<_>>();
            for node in &silent {
                heard.remove(node);
            }
            silent
        };
        for node in silent {
            let lost = self.fleet.node_lost(&node);
            tracing::warn!(%node, drivers = lost.len(), "node silent on the bus; its drivers are not dispatchable");
        }
    }

    /// This node's changed drivers, for the others (also its heartbeat on the bus).
    pub fn publish_fleet(&self, now: Instant) {
        if self.bus.is_clustered() {
            let records = self.fleet.take_records(now);
            self.bus.publish(Note::Fleet { records });
        }
    }

    fn apply(&self, note: &Note, origin: Origin) {
        match note {
            Note::Trip {
                event,
                previous_driver,
                closed_offers,
            } => {
                let event = Arc::new(event.clone());
                self.apply_trip(&event, previous_driver.as_deref(), origin);
                for closed in closed_offers {
                    self.apply_offer_closed(closed, event.at, origin);
                }
            }
            Note::OfferMade { offer, message } => self.apply_offer_made(offer, message, origin),
            Note::OfferClosed { closed, at } => self.apply_offer_closed(closed, *at, origin),
            Note::Fleet { .. } => {}
        }
    }

    fn apply_trip(&self, event: &Arc<TripEvent>, previous_driver: Option<&str>, origin: Origin) {
        let trip = &event.trip;
        if let Some(driver_id) = previous_driver.or(trip.driver_id.as_deref()) {
            match event.event {
                EventKind::Started => self.fleet.start_odometer(driver_id, Instant::now()),
                EventKind::Accepted => self.fleet.set_trip(driver_id, Some(trip.id.clone())),
                _ if trip.state.has_driver() => {}
                _ => self.fleet.set_trip(driver_id, None),
            }
        }
        if trip.state == TripState::Requested {
            self.dispatcher.trip_requested(trip);
        } else if matches!(
            event.event,
            EventKind::Accepted | EventKind::Cancelled | EventKind::Expired
        ) {
            self.dispatcher.trip_closed(&trip.id);
        }
        if previous_driver.is_some() && !trip.state.has_driver() {
            // The driver is free again, for every waiting trip.
            self.dispatcher.driver_available();
        }
        if origin == Origin::Here {
            self.metrics.transition(event.event.as_str());
        }
        self.tally.event(event);
        self.hub.publish(event, previous_driver);
    }

    fn apply_offer_made(&self, offer: &NewOffer, message: &OfferMessage, origin: Origin) {
        self.fleet.set_offer(&offer.driver_id, &offer.id, true);
        self.hub
            .send_to_driver(&offer.driver_id, ServerMessage::Offer(message.clone()));
        let line = offer.log();
        if origin == Origin::Here {
            self.metrics.offer(OfferOutcome::Made);
        }
        self.tally.offer(&line);
        self.hub.publish_offer_log(line);
    }

    fn apply_offer_closed(&self, closed: &ClosedOffer, at: Timestamp, origin: Origin) {
        self.fleet
            .set_offer(&closed.driver_id, &closed.offer_id, false);
        if let Some(reason) = closed.reason {
            self.hub.send_to_driver(
                &closed.driver_id,
                ServerMessage::OfferWithdrawn {
                    offer_id: closed.offer_id.clone(),
                    reason,
                },
            );
        }
        self.dispatcher.offer_closed(closed);
        let line = closed.log(at);
        if origin == Origin::Here {
            self.metrics.offer(closed.outcome);
        }
        self.tally.offer(&line);
        self.hub.publish_offer_log(line);
    }
}

/// The dispatch loop's writes take the same commit path as everyone's.
impl Announce for Rides {
    fn offer_made(&self, offer: &NewOffer, message: &OfferMessage) {
        self.commit(Note::OfferMade {
            offer: offer.clone(),
            message: message.clone(),
        });
    }

    fn offer_closed(&self, closed: &ClosedOffer, at: Timestamp) {
        self.commit(Note::OfferClosed {
            closed: closed.clone(),
            at,
        });
    }

    fn trip_changed(&self, transition: &Transition) {
        self.committed(transition);
    }
}
