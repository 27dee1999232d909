//! The dispatcher's book: which trips wait, which offers are open, who is reserved — and
//! what to do next. Pure: no I/O, no clock, no lock. [`Book::step`] looks at the fleet as
//! of `now` and returns [`Effect`]s; the dispatch loop performs them against the store
//! and reports back ([`Book::offer_refused`], [`Book::expired`], …). Every rule of
//! DESIGN §4 lives here and is unit-tested without a database.

mod matching;

use matching::{Chosen, candidates, offer_effect};
#[cfg(test)]
mod tests;

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use tokio::time::Instant;

use super::rank::{Eta, rank_candidates};
use crate::{
    config::{DispatchConfig, Matching},
    fleet::{Candidate, Fleet, FleetIndex},
    geometry::LatLng,
    protocol::{OfferMessage, operators::OfferOutcome},
    store::{ClosedOffer, NewOffer, OfferRecord},
    trip::{Money, Timestamp, Trip, TripState},
};

/// What the book needs of the fleet: the nearest dispatchable drivers.
pub trait FleetView {
    fn nearest_available(
        &self,
        pickup: LatLng,
        radius_m: f64,
        k: usize,
        now: Instant,
        exclude: &dyn Fn(&str) -> bool,
    ) -> Vec<Candidate>;
}

impl FleetView for FleetIndex {
    fn nearest_available(
        &self,
        pickup: LatLng,
        radius_m: f64,
        k: usize,
        now: Instant,
        exclude: &dyn Fn(&str) -> bool,
    ) -> Vec<Candidate> {
        FleetIndex::nearest_available(self, pickup, radius_m, k, now, exclude)
    }
}

impl FleetView for Fleet {
    fn nearest_available(
        &self,
        pickup: LatLng,
        radius_m: f64,
        k: usize,
        now: Instant,
        exclude: &dyn Fn(&str) -> bool,
    ) -> Vec<Candidate> {
        Fleet::nearest_available(self, pickup, radius_m, k, now, exclude)
    }
}

/// The dispatch numbers of DESIGN §4.
#[derive(Debug, Clone)]
pub struct Policy {
    pub radii_m: Vec<f64>,
    pub max_candidates: usize,
    pub offer_timeout: Duration,
    pub deadline: Duration,
    pub retry: Duration,
    /// `Some` for batched matching (`HAIL_MATCHING=batch`).
    pub batch: Option<BatchPolicy>,
}

/// Batched matching: the window trips are collected over, and most trips in one.
#[derive(Debug, Clone, Copy)]
pub struct BatchPolicy {
    pub window: Duration,
    pub max_trips: usize,
}

impl Policy {
    pub fn new(config: &DispatchConfig) -> Policy {
        Policy {
            radii_m: config.search_radius_m.clone(),
            max_candidates: config.max_candidates as usize,
            offer_timeout: Duration::from_millis(config.offer_timeout_ms),
            deadline: Duration::from_millis(config.dispatch_deadline_ms),
            retry: Duration::from_millis(config.dispatch_retry_ms),
            batch: (config.matching == Matching::Batch).then(|| BatchPolicy {
                window: Duration::from_millis(config.batch_window_ms),
                max_trips: config.batch_max_trips as usize,
            }),
        }
    }
}

/// Work for the dispatch loop.
#[derive(Debug, Clone, PartialEq)]
#[expect(
    clippy::large_enum_variant,
    reason = "a step yields a handful of effects, consumed at once"
)]
pub enum Effect {
    /// Write this offer (under the lease) and, once committed, deliver `message`.
    Offer {
        offer: NewOffer,
        message: OfferMessage,
        /// For the trip's first offer: how long it waited for it.
        first_after: Option<Duration>,
    },
    /// Close this open offer as lapsed: its driver did not answer in time.
    Lapse { offer_id: String },
    /// Withdraw this open offer: its driver went offline.
    Withdraw { offer_id: String },
    /// Expire this trip: nobody accepted it before its deadline.
    Expire { trip_id: String },
}

/// Why the store refused an offer the book decided on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The trip is no longer waiting.
    TripGone,
    /// The driver or the trip holds an open offer the book did not know of: the book is
    /// out of step with the store and should be reloaded.
    Conflict,
    /// The store could not be reached; try again later.
    Unavailable,
}

/// A trip waiting for a driver.
#[derive(Debug)]
struct Pending {
    pickup: LatLng,
    dropoff: LatLng,
    fare_estimate: Money,
    /// When it became `requested`, for the deadline and the request→offer latency.
    since: Instant,
    deadline: Instant,
    excluded: HashSet<String>,
    offer: Option<String>,
    next_search: Instant,
    offered: bool,
    /// An expiry is being written; don't start another.
    expiring: bool,
}

#[derive(Debug)]
struct OpenOffer {
    trip_id: String,
    driver_id: String,
    expires_at: Instant,
    /// Its driver went offline: withdraw it.
    withdraw: bool,
    /// A lapse or withdrawal is being written.
    closing: bool,
}

pub struct Book {
    policy: Policy,
    eta: Box<dyn Eta>,
    trips: HashMap<String, Pending>,
    offers: HashMap<String, OpenOffer>,
    /// Driver → the open offer it holds: never two (invariant 1).
    reserved: HashMap<String, String>,
    /// A driver became free since the last step: search for every waiting trip, not only
    /// those due for a retry.
    fleet_changed: bool,
    /// The book may have missed something (a refused offer, a full inbox): reload it.
    pub out_of_step: bool,
}

/// Converts a wall-clock time into this process's monotonic clock, as of `now`/`wall`.
fn instant_at(at: Timestamp, now: Instant, wall: Timestamp) -> Instant {
    let delta_ms = at.millis() - wall.millis();
    if delta_ms >= 0 {
        now + Duration::from_millis(delta_ms as u64)
    } else {
        now.checked_sub(Duration::from_millis((-delta_ms) as u64))
            .unwrap_or(now)
    }
}

impl Book {
    pub fn new(policy: Policy, eta: Box<dyn Eta>) -> Book {
        Book {
            policy,
            eta,
            trips: HashMap::new(),
            offers: HashMap::new(),
            reserved: HashMap::new(),
            fleet_changed: false,
            out_of_step: false,
        }
    }

    pub fn pending_trips(&self) -> usize {
        self.trips.len()
    }

    pub fn open_offers(&self) -> usize {
        self.offers.len()
    }

    /// Forgets everything (leadership lost, or before a reload).
    pub fn clear(&mut self) {
        self.trips.clear();
        self.offers.clear();
        self.reserved.clear();
        self.out_of_step = false;
    }

    /// Starts dispatching a trip that is `requested`. Its deadline counts from when it
    /// became requested (`trip.updated_at`), so a trip adopted after a restart or a
    /// failover keeps the deadline it had.
    pub fn submit(
        &mut self,
        trip: &Trip,
        excluded: impl IntoIterator<Item = String>,
        now: Instant,
        wall: Timestamp,
    ) {
        if trip.state != TripState::Requested {
            return;
        }
        if let Some(pending) = self.trips.get_mut(&trip.id) {
            pending.excluded.extend(excluded);
            return;
        }
        let since = instant_at(trip.updated_at, now, wall).min(now);
        self.trips.insert(
            trip.id.clone(),
            Pending {
                pickup: trip.pickup,
                dropoff: trip.dropoff,
                fare_estimate: trip.fare_estimate.clone(),
                since,
                deadline: since + self.policy.deadline,
                excluded: excluded.into_iter().collect(),
                offer: None,
                // Batched: first weighed when its window closes.
                next_search: now + self.policy.batch.map_or(Duration::ZERO, |b| b.window),
                offered: false,
                expiring: false,
            },
        );
    }

    /// Takes over an open offer found in the store: its deadline stands.
    pub fn adopt(&mut self, record: &OfferRecord, now: Instant, wall: Timestamp) {
        let offer = &record.offer;
        if let Some(pending) = self.trips.get_mut(&offer.trip_id) {
            pending.offer = Some(offer.id.clone());
            pending.offered = true;
        }
        self.reserved
            .insert(offer.driver_id.clone(), offer.id.clone());
        self.offers.insert(
            offer.id.clone(),
            OpenOffer {
                trip_id: offer.trip_id.clone(),
                driver_id: offer.driver_id.clone(),
                expires_at: instant_at(offer.expires_at, now, wall),
                withdraw: false,
                closing: false,
            },
        );
    }

    /// Brings the book in line with the store — every waiting trip with its exclusions,
    /// every open offer — keeping what the book knows beyond it (when a trip was first
    /// offered, an offer being closed). What it holds that the store does not was settled
    /// elsewhere meanwhile, and news of it was lost: it is forgotten, and its trip and
    /// driver are searched again.
    pub fn sync(
        &mut self,
        waiting: &[(Trip, Vec<String>)],
        open: &[OfferRecord],
        now: Instant,
        wall: Timestamp,
    ) {
        let waiting_ids: HashSet<&str> = waiting.iter().map(|(trip, _)| trip.id.as_str()).collect();
        self.trips.retain(|id, _| waiting_ids.contains(id.as_str()));
        for (trip, excluded) in waiting {
            self.submit(trip, excluded.iter().cloned(), now, wall);
        }
        let open_ids: HashSet<&str> = open.iter().map(|record| record.offer.id.as_str()).collect();
        let settled: Vec<String> = self
            .offers
            .keys()
            .filter(|id| !open_ids.contains(id.as_str()))
            .cloned()
            .collect();
        for offer_id in settled {
            self.forget_offer(&offer_id);
            self.fleet_changed = true;
        }
        for record in open {
            if !self.offers.contains_key(&record.offer.id) {
                self.adopt(record, now, wall);
            }
        }
        for pending in self.trips.values_mut() {
            if pending.offer.is_none() {
                pending.next_search = pending.next_search.min(now);
            }
        }
    }

    /// The trip left `requested` (accepted, cancelled, expired, assigned): stop
    /// dispatching it. Its open offer was closed in the same transaction.
    pub fn trip_closed(&mut self, trip_id: &str) {
        if let Some(pending) = self.trips.remove(trip_id)
            && let Some(offer_id) = pending.offer
        {
            self.forget_offer(&offer_id);
        }
    }

    /// An offer closed, by whoever closed it. A driver who declined or let it lapse is
    /// never offered that trip again; either way the driver is free for other trips.
    pub fn offer_closed(&mut self, closed: &ClosedOffer, now: Instant) {
        self.forget_offer(&closed.offer_id);
        if let Some(pending) = self.trips.get_mut(&closed.trip_id) {
            if matches!(
                closed.outcome,
                OfferOutcome::Declined | OfferOutcome::Expired
            ) {
                pending.excluded.insert(closed.driver_id.clone());
            }
            if pending.offer.as_deref() == Some(closed.offer_id.as_str()) {
                pending.offer = None;
                pending.next_search = now;
            }
        }
        self.fleet_changed = true;
    }

    fn forget_offer(&mut self, offer_id: &str) {
        if let Some(offer) = self.offers.remove(offer_id) {
            if self.reserved.get(&offer.driver_id).map(String::as_str) == Some(offer_id) {
                self.reserved.remove(&offer.driver_id);
            }
            if let Some(pending) = self.trips.get_mut(&offer.trip_id)
                && pending.offer.as_deref() == Some(offer_id)
            {
                pending.offer = None;
            }
        }
    }

    /// Some driver became dispatchable: search for every waiting trip at the next step.
    pub fn driver_available(&mut self) {
        self.fleet_changed = true;
    }

    /// The driver went offline (said so, or its grace period ended): withdraw its offer.
    pub fn driver_unavailable(&mut self, driver_id: &str) {
        if let Some(offer_id) = self.reserved.get(driver_id)
            && let Some(offer) = self.offers.get_mut(offer_id)
        {
            offer.withdraw = true;
        }
    }

    /// Whether an offer in the book is past its deadline at `now`.
    pub fn offer_expired(&self, offer_id: &str, now: Instant) -> bool {
        self.offers
            .get(offer_id)
            .is_some_and(|offer| offer.expires_at <= now)
    }

    /// The open offer a driver holds, if any.
    pub fn offer_of(&self, driver_id: &str) -> Option<&str> {
        self.reserved.get(driver_id).map(String::as_str)
    }

    /// The store refused an offer this book decided on.
    pub fn offer_refused(&mut self, offer_id: &str, refusal: Refusal, now: Instant) {
        let trip_id = self.offers.get(offer_id).map(|offer| offer.trip_id.clone());
        self.forget_offer(offer_id);
        let Some(trip_id) = trip_id else { return };
        match refusal {
            Refusal::TripGone => {
                self.trips.remove(&trip_id);
            }
            Refusal::Conflict | Refusal::Unavailable => {
                if let Some(pending) = self.trips.get_mut(&trip_id) {
                    pending.next_search = now + self.policy.retry;
                }
                self.out_of_step |= refusal == Refusal::Conflict;
            }
        }
    }

    /// A lapse or withdrawal was written (`Some`), or found the offer closed already
    /// (`None`: answered or closed with its trip; that news is on its way, and the store
    /// decides).
    pub fn closed(&mut self, offer_id: &str, closed: Option<&ClosedOffer>, now: Instant) {
        match closed {
            Some(closed) => self.offer_closed(closed, now),
            None => {
                self.forget_offer(offer_id);
                self.fleet_changed = true;
            }
        }
    }

    /// The lapse or withdrawal could not be written (store unreachable): try again at
    /// the next step.
    pub fn close_failed(&mut self, offer_id: &str) {
        if let Some(offer) = self.offers.get_mut(offer_id) {
            offer.closing = false;
        }
    }

    /// An expiry was decided by the store (`true`: written, or the trip had left
    /// `requested` anyway) or could not be written (`false`: try again).
    pub fn expired(&mut self, trip_id: &str, done: bool) {
        if done {
            self.trip_closed(trip_id);
        } else if let Some(pending) = self.trips.get_mut(trip_id) {
            pending.expiring = false;
        }
    }

    /// One pass as of `now`: lapses, expiries and new offers. Returns the effects and when
    /// the next pass is due.
    pub fn step(
        &mut self,
        fleet: &dyn FleetView,
        now: Instant,
        wall: Timestamp,
    ) -> (Vec<Effect>, Instant) {
        let mut effects = Vec::new();
        let mut next = now + Duration::from_secs(60);
        let fleet_changed = std::mem::take(&mut self.fleet_changed);

        for (offer_id, offer) in &mut self.offers {
            if offer.closing {
                continue;
            }
            if offer.expires_at <= now {
                offer.closing = true;
                effects.push(Effect::Lapse {
                    offer_id: offer_id.clone(),
                });
            } else if offer.withdraw {
                offer.closing = true;
                effects.push(Effect::Withdraw {
                    offer_id: offer_id.clone(),
                });
            } else {
                next = next.min(offer.expires_at);
            }
        }

        let reserved = &mut self.reserved;
        let mut due = Vec::new();
        let mut solve_now = false;
        for (trip_id, pending) in &mut self.trips {
            if pending.deadline <= now {
                if !pending.expiring {
                    pending.expiring = true;
                    effects.push(Effect::Expire {
                        trip_id: trip_id.clone(),
                    });
                }
                continue;
            }
            next = next.min(pending.deadline);
            if pending.offer.is_some() {
                continue;
            }
            if let Some(batch) = self.policy.batch {
                // Weighed with the others once a window closes: its own (`next_search`),
                // or, when a driver became free, any that has already waited one.
                if pending.next_search <= now
                    || (fleet_changed && pending.since + batch.window <= now)
                {
                    solve_now = true;
                }
                due.push(trip_id.clone());
                next = next.min(pending.next_search.max(now + Duration::from_millis(1)));
                continue;
            }
            if fleet_changed || pending.next_search <= now {
                let nearest = candidates(&self.policy, fleet, pending, reserved, now);
                let ranked =
                    rank_candidates(&nearest, &self.policy.radii_m, pending.pickup, &*self.eta);
                match ranked.first() {
                    Some(best) => {
                        let chosen = Chosen {
                            candidate: best,
                            rank: 1,
                            candidates: ranked.len(),
                            batch: None,
                        };
                        let (effect, offer_id, open) =
                            offer_effect(&self.policy, trip_id, pending, chosen, now, wall);
                        reserved.insert(open.driver_id.clone(), offer_id.clone());
                        next = next.min(open.expires_at);
                        self.offers.insert(offer_id, open);
                        effects.push(effect);
                        continue;
                    }
                    None => pending.next_search = now + self.policy.retry,
                }
            }
            next = next.min(pending.next_search.max(now + Duration::from_millis(1)));
        }
        if solve_now {
            effects.extend(self.solve_batch(due, fleet, now, wall));
            if let Some(window) = self.policy.batch.map(|b| b.window) {
                for pending in self.trips.values().filter(|p| p.offer.is_none()) {
                    next = next.min(pending.next_search.max(now + Duration::from_millis(1)));
                }
                next = next.min(now + window);
            }
        }
        // Lapses before expiries before offers: an expiring trip's lapsed driver is freed
        // first, and offers go out last, after everything that frees a driver.
        effects.sort_by_key(|effect| match effect {
            Effect::Lapse { .. } | Effect::Withdraw { .. } => 0,
            Effect::Expire { .. } => 1,
            Effect::Offer { .. } => 2,
        });
        (effects, next)
    }
}
