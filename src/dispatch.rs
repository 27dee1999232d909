//! The dispatcher: matches requested trips to available drivers (DESIGN §4).
//!
//! It owns the offers and their deadlines, in memory. One offer at a time per trip, to the
//! best-ranked dispatchable driver; a decline or a lapse moves on to the next candidate and
//! that driver is never offered the trip again. Whether an offer *wins* is decided by the
//! store, atomically: the accept is a versioned trip transition guarded by the
//! one-active-trip-per-driver index.
//!
//! Locking: [`Book`] and the fleet index are std mutexes held for short, synchronous
//! sections and never across an await. When both are needed the book is locked first.
//! Store calls and their consequences happen after the locks are released.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{sync::Notify, time::Instant};

use crate::{
    config::DispatchConfig,
    error::ApiError,
    fleet::{Candidate, FleetIndex},
    geometry::LatLng,
    hub::{Hub, OfferMessage, ServerMessage, WithdrawReason},
    metrics::{Metrics, OfferOutcome},
    ops::OfferLog,
    store::{Store, StoreError},
    trip::{Change, Money, Timestamp, Trip, TripEvent, TripState},
};

/// How many answered offers are remembered, so a late answer gets 409, not 404.
const ANSWERED_MEMORY: usize = 100_000;

/// Estimated time for a driver to reach a pickup. Behind a trait so a road router (OSRM,
/// Valhalla) can replace the straight-line estimate.
pub trait Eta: Send + Sync {
    fn pickup_eta_s(&self, from: LatLng, to: LatLng, straight_line_m: f64) -> f64;
}

/// Straight line × detour factor at an average urban speed.
pub struct StraightLineEta {
    pub detour_factor: f64,
    pub speed_mps: f64,
}

impl Eta for StraightLineEta {
    fn pickup_eta_s(&self, _from: LatLng, _to: LatLng, straight_line_m: f64) -> f64 {
        straight_line_m * self.detour_factor / self.speed_mps
    }
}

/// A candidate with the inputs of its ranking, so "why this driver?" has an answer.
#[derive(Debug, Clone, PartialEq)]
pub struct RankedCandidate {
    pub driver_id: Arc<str>,
    pub distance_m: f64,
    pub eta_s: f64,
    /// Search radius the candidate was found in.
    pub radius_m: f64,
}

/// Candidates of the innermost radius that has any, best ETA first. `nearest` is sorted by
/// distance and bounded by the outermost radius.
pub fn rank_candidates(
    nearest: Vec<Candidate>,
    radii_m: &[f64],
    pickup: LatLng,
    positions: impl Fn(&str) -> Option<LatLng>,
    eta: &dyn Eta,
) -> Vec<RankedCandidate> {
    for &radius_m in radii_m {
        let mut tier: Vec<RankedCandidate> = nearest
            .iter()
            .filter(|c| c.distance_m <= radius_m)
            .map(|c| {
                let from = positions(&c.driver_id).unwrap_or(pickup);
                RankedCandidate {
                    driver_id: c.driver_id.clone(),
                    distance_m: c.distance_m,
                    eta_s: eta.pickup_eta_s(from, pickup, c.distance_m),
                    radius_m,
                }
            })
            .collect();
        if !tier.is_empty() {
            tier.sort_by(|a, b| {
                a.eta_s
                    .total_cmp(&b.eta_s)
                    .then(a.distance_m.total_cmp(&b.distance_m))
            });
            return tier;
        }
    }
    Vec::new()
}

/// A trip waiting for a driver.
struct Pending {
    pickup: LatLng,
    dropoff: LatLng,
    fare_estimate: Money,
    /// When it became `requested`, for the request→offer latency.
    since: Instant,
    deadline: Instant,
    excluded: HashSet<String>,
    offer: Option<String>,
    next_search: Instant,
    offered: bool,
    /// An expiry is being written; don't start another.
    expiring: bool,
}

struct Offer {
    trip_id: String,
    driver_id: String,
    expires_at: Instant,
    /// The driver said yes and the store is deciding; neither lapse nor re-offer.
    accepting: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Answer {
    Accepted,
    Declined,
    Lapsed,
    Withdrawn,
}

struct Answered {
    driver_id: String,
    answer: Answer,
}

#[derive(Default)]
struct Book {
    trips: HashMap<String, Pending>,
    offers: HashMap<String, Offer>,
    answered: HashMap<String, Answered>,
    answered_order: VecDeque<String>,
}

impl Book {
    fn remember(&mut self, offer_id: &str, driver_id: &str, answer: Answer) {
        if self
            .answered
            .insert(
                offer_id.to_string(),
                Answered {
                    driver_id: driver_id.to_string(),
                    answer,
                },
            )
            .is_none()
        {
            self.answered_order.push_back(offer_id.to_string());
        }
        while self.answered_order.len() > ANSWERED_MEMORY {
            if let Some(old) = self.answered_order.pop_front() {
                self.answered.remove(&old);
            }
        }
    }
}

/// Work found under the locks, done after them.
enum Effect {
    Send(String, Box<ServerMessage>),
    Exclude {
        trip_id: String,
        driver_id: String,
        reason: &'static str,
    },
    Expire(String),
}

impl Effect {
    fn send(driver_id: String, message: ServerMessage) -> Effect {
        Effect::Send(driver_id, Box::new(message))
    }
}

pub struct Dispatcher {
    book: Mutex<Book>,
    wake: Notify,
    /// Set by [`Self::driver_available`], consumed by the next [`Self::step`].
    fleet_changed: std::sync::atomic::AtomicBool,
    fleet: Arc<Mutex<FleetIndex>>,
    store: Store,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    config: DispatchConfig,
    eta: Box<dyn Eta>,
}

impl Dispatcher {
    pub fn new(
        config: DispatchConfig,
        fleet: Arc<Mutex<FleetIndex>>,
        store: Store,
        hub: Arc<Hub>,
        metrics: Arc<Metrics>,
    ) -> Dispatcher {
        let eta = Box::new(StraightLineEta {
            detour_factor: config.detour_factor,
            speed_mps: config.urban_speed_mps,
        });
        Dispatcher {
            book: Mutex::default(),
            wake: Notify::new(),
            fleet_changed: Default::default(),
            fleet,
            store,
            hub,
            metrics,
            config,
            eta,
        }
    }

    /// Something changed that may let a waiting trip be dispatched now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// A driver became dispatchable: search again for every waiting trip now, instead of
    /// at each trip's next retry.
    pub fn driver_available(&self) {
        self.fleet_changed
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.wake();
    }

    /// Starts dispatching a trip that is `requested`. Its deadline counts from when it
    /// became requested, so a trip recovered after a restart keeps the deadline it had.
    pub fn submit(&self, trip: &Trip, excluded: impl IntoIterator<Item = String>, now: Instant) {
        if trip.state != TripState::Requested {
            return;
        }
        let age = Duration::from_millis(
            (Timestamp::now().millis() - trip.updated_at.millis()).max(0) as u64,
        );
        let since = now.checked_sub(age).unwrap_or(now);
        let deadline = since + Duration::from_millis(self.config.dispatch_deadline_ms);
        let pending = Pending {
            pickup: trip.pickup,
            dropoff: trip.dropoff,
            fare_estimate: trip.fare_estimate.clone(),
            since,
            deadline,
            excluded: excluded.into_iter().collect(),
            offer: None,
            next_search: now,
            offered: false,
            expiring: false,
        };
        self.book
            .lock()
            .unwrap()
            .trips
            .insert(trip.id.clone(), pending);
        self.wake();
    }

    /// Re-dispatches every trip the store has in `requested`, after a restart.
    pub async fn recover(&self, now: Instant) -> Result<usize, StoreError> {
        let trips = self.store.trips_in_states(&[TripState::Requested]).await?;
        for trip in &trips {
            let excluded = self.store.exclusions(&trip.id).await?;
            self.submit(trip, excluded, now);
        }
        Ok(trips.len())
    }

    pub fn pending_trips(&self) -> usize {
        self.book.lock().unwrap().trips.len()
    }

    /// The dispatch loop: lapses offers, expires trips, makes offers; sleeps until the
    /// next deadline or until woken.
    pub async fn run(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        loop {
            let next = self.step(Instant::now()).await;
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {}
                _ = self.wake.notified() => {}
                _ = crate::server::stopping(&mut shutdown) => return,
            }
        }
    }

    /// One pass over the book as of `now`. Returns when the next pass is due. Time is a
    /// parameter so tests can drive deadlines exactly, without sleeping.
    pub async fn step(&self, now: Instant) -> Instant {
        let retry = Duration::from_millis(self.config.dispatch_retry_ms);
        let mut fleet_changed = self
            .fleet_changed
            .swap(false, std::sync::atomic::Ordering::Relaxed);
        let mut effects = Vec::new();
        let mut next = now + Duration::from_secs(60);
        {
            let mut book = self.book.lock().unwrap();
            let mut fleet = self.fleet.lock().unwrap();
            let book = &mut *book;

            let lapsed: Vec<String> = book
                .offers
                .iter()
                .filter(|(_, offer)| !offer.accepting && offer.expires_at <= now)
                .map(|(id, _)| id.clone())
                .collect();
            // A driver whose offer lapsed is free for every other waiting trip.
            fleet_changed |= !lapsed.is_empty();
            for offer_id in lapsed {
                let offer = book.offers.remove(&offer_id).expect("listed above");
                fleet.release(&offer.driver_id, &offer_id);
                book.remember(&offer_id, &offer.driver_id, Answer::Lapsed);
                if let Some(pending) = book.trips.get_mut(&offer.trip_id) {
                    pending.offer = None;
                    pending.excluded.insert(offer.driver_id.clone());
                    pending.next_search = now;
                }
                self.record_offer(
                    OfferOutcome::expired,
                    &offer_id,
                    &offer.trip_id,
                    &offer.driver_id,
                    None,
                );
                effects.push(Effect::send(
                    offer.driver_id.clone(),
                    ServerMessage::OfferWithdrawn {
                        offer_id,
                        reason: WithdrawReason::Expired,
                    },
                ));
                effects.push(Effect::Exclude {
                    trip_id: offer.trip_id,
                    driver_id: offer.driver_id,
                    reason: "offer_lapsed",
                });
            }

            // Offers withdrawn below, remembered after the loop (that needs `book` whole).
            let mut withdrawn = Vec::new();
            for (trip_id, pending) in book.trips.iter_mut() {
                let accepting = pending
                    .offer
                    .as_ref()
                    .and_then(|id| book.offers.get(id))
                    .is_some_and(|offer| offer.accepting);
                if accepting {
                    continue;
                }
                if pending.deadline <= now {
                    if !pending.expiring {
                        pending.expiring = true;
                        if let Some(offer_id) = pending.offer.take()
                            && let Some(offer) = book.offers.remove(&offer_id)
                        {
                            fleet.release(&offer.driver_id, &offer_id);
                            self.record_offer(
                                OfferOutcome::withdrawn,
                                &offer_id,
                                trip_id,
                                &offer.driver_id,
                                None,
                            );
                            effects.push(Effect::send(
                                offer.driver_id.clone(),
                                ServerMessage::OfferWithdrawn {
                                    offer_id: offer_id.clone(),
                                    reason: WithdrawReason::Expired,
                                },
                            ));
                            withdrawn.push((offer_id, offer.driver_id));
                        }
                        effects.push(Effect::Expire(trip_id.clone()));
                    }
                    continue;
                }
                next = next.min(pending.deadline);
                if pending.offer.is_none() {
                    if fleet_changed || pending.next_search <= now {
                        match self.best_candidate(&fleet, pending, now) {
                            Some((candidate, ranked)) => {
                                let offer_id = crate::store::new_id("ofr");
                                if fleet.reserve(&candidate.driver_id, &offer_id, now) {
                                    let expires_at =
                                        now + Duration::from_millis(self.config.offer_timeout_ms);
                                    if !pending.offered {
                                        pending.offered = true;
                                        self.metrics
                                            .request_to_offer
                                            .observe((now - pending.since).as_secs_f64());
                                    }
                                    pending.offer = Some(offer_id.clone());
                                    book.offers.insert(
                                        offer_id.clone(),
                                        Offer {
                                            trip_id: trip_id.clone(),
                                            driver_id: candidate.driver_id.to_string(),
                                            expires_at,
                                            accepting: false,
                                        },
                                    );
                                    next = next.min(expires_at);
                                    self.record_offer(
                                        OfferOutcome::made,
                                        &offer_id,
                                        trip_id,
                                        &candidate.driver_id,
                                        Some((&candidate, ranked)),
                                    );
                                    tracing::debug!(%trip_id, %offer_id, driver_id = %candidate.driver_id,
                                        distance_m = candidate.distance_m, eta_s = candidate.eta_s,
                                        radius_m = candidate.radius_m, "offer made");
                                    effects.push(Effect::send(
                                        candidate.driver_id.to_string(),
                                        ServerMessage::Offer(OfferMessage {
                                            offer_id,
                                            trip_id: trip_id.clone(),
                                            pickup: pending.pickup,
                                            dropoff: pending.dropoff,
                                            pickup_distance_m: candidate.distance_m.round(),
                                            pickup_eta_s: candidate.eta_s.round(),
                                            fare_estimate: pending.fare_estimate.clone(),
                                            expires_at: Timestamp::now()
                                                .plus_ms(self.config.offer_timeout_ms),
                                        }),
                                    ));
                                    continue;
                                }
                                pending.next_search = now;
                            }
                            None => pending.next_search = now + retry,
                        }
                    }
                    next = next.min(pending.next_search.max(now + Duration::from_millis(1)));
                }
            }
            for (offer_id, driver_id) in withdrawn {
                book.remember(&offer_id, &driver_id, Answer::Withdrawn);
            }
            for offer in book.offers.values() {
                if !offer.accepting {
                    next = next.min(offer.expires_at);
                }
            }
        }
        self.apply(effects).await;
        next
    }

    fn best_candidate(
        &self,
        fleet: &FleetIndex,
        pending: &Pending,
        now: Instant,
    ) -> Option<(RankedCandidate, usize)> {
        let outermost = self
            .config
            .search_radius_m
            .iter()
            .copied()
            .fold(0.0, f64::max);
        let nearest = fleet.nearest_available(
            pending.pickup,
            outermost,
            self.config.max_candidates as usize,
            now,
            |driver_id| pending.excluded.contains(driver_id),
        );
        let ranked = rank_candidates(
            nearest,
            &self.config.search_radius_m,
            pending.pickup,
            |id| fleet.position(id),
            &*self.eta,
        );
        let count = ranked.len();
        ranked.into_iter().next().map(|best| (best, count))
    }

    /// Counts an offer outcome and writes it to the operators' audit log; `ranking` is the
    /// chosen candidate and how many were ranked, for offers made.
    fn record_offer(
        &self,
        outcome: OfferOutcome,
        offer_id: &str,
        trip_id: &str,
        driver_id: &str,
        ranking: Option<(&RankedCandidate, usize)>,
    ) {
        let name = match outcome {
            OfferOutcome::made => "made",
            OfferOutcome::accepted => "accepted",
            OfferOutcome::declined => "declined",
            OfferOutcome::expired => "expired",
            OfferOutcome::withdrawn => "withdrawn",
        };
        self.metrics.offer(outcome);
        self.hub.ops.offer(OfferLog {
            offer_id: offer_id.to_string(),
            trip_id: trip_id.to_string(),
            driver_id: driver_id.to_string(),
            outcome: name,
            pickup_distance_m: ranking.map(|(c, _)| c.distance_m.round()),
            pickup_eta_s: ranking.map(|(c, _)| c.eta_s.round()),
            // The best-ranked candidate is the one offered.
            rank: ranking.map(|_| 1),
            candidates: ranking.map(|(_, count)| count as u32),
            radius_m: ranking.map(|(c, _)| c.radius_m),
            at: Timestamp::now(),
        });
    }

    async fn apply(&self, effects: Vec<Effect>) {
        for effect in effects {
            match effect {
                Effect::Send(driver_id, message) => {
                    self.hub.send_to_driver(&driver_id, *message);
                }
                Effect::Exclude {
                    trip_id,
                    driver_id,
                    reason,
                } => {
                    if let Err(error) = self.store.add_exclusion(&trip_id, &driver_id, reason).await
                    {
                        tracing::warn!(%trip_id, %driver_id, %error, "could not persist exclusion");
                    }
                }
                Effect::Expire(trip_id) => self.expire(&trip_id).await,
            }
        }
    }

    async fn expire(&self, trip_id: &str) {
        let result = self
            .store
            .transition(trip_id, &Change::Expire, |_| Ok(()))
            .await;
        match result {
            Ok(transition) => {
                self.book.lock().unwrap().trips.remove(trip_id);
                self.metrics.transition(transition.event.event.as_str());
                self.hub.publish(&transition.event, None);
            }
            Err(StoreError::InvalidTransition(_) | StoreError::NotFound) => {
                // Accepted or cancelled meanwhile: whoever did that owns it now.
                self.book.lock().unwrap().trips.remove(trip_id);
            }
            Err(error) => {
                tracing::warn!(%trip_id, %error, "could not expire trip; will retry");
                if let Some(pending) = self.book.lock().unwrap().trips.get_mut(trip_id) {
                    pending.expiring = false;
                }
            }
        }
    }

    /// Checks that `offer_id` is open and `driver_id`'s. Unknown or someone else's → 404;
    /// answered or lapsed → 409.
    fn open_offer<'a>(
        book: &'a mut Book,
        offer_id: &str,
        driver_id: &str,
        now: Instant,
    ) -> Result<&'a mut Offer, ApiError> {
        let Some(offer) = book.offers.get_mut(offer_id) else {
            return Err(match book.answered.get(offer_id) {
                Some(answered) if answered.driver_id == driver_id => match answered.answer {
                    Answer::Lapsed => ApiError::conflict("offer_expired", "this offer lapsed"),
                    Answer::Withdrawn => {
                        ApiError::conflict("offer_expired", "this offer was withdrawn")
                    }
                    Answer::Accepted | Answer::Declined => ApiError::conflict(
                        "offer_already_answered",
                        "this offer was already answered",
                    ),
                },
                _ => ApiError::not_found("offer"),
            });
        };
        if offer.driver_id != driver_id {
            return Err(ApiError::not_found("offer"));
        }
        if offer.accepting {
            return Err(ApiError::conflict(
                "offer_already_answered",
                "this offer is already being accepted",
            ));
        }
        if offer.expires_at <= now {
            return Err(ApiError::conflict("offer_expired", "this offer lapsed"));
        }
        Ok(offer)
    }

    /// The driver takes the offered trip. The store decides: the trip must still be
    /// requested and the driver must hold no other active trip.
    pub async fn accept(
        &self,
        offer_id: &str,
        driver_id: &str,
        now: Instant,
    ) -> Result<TripEvent, ApiError> {
        let trip_id = {
            let mut book = self.book.lock().unwrap();
            let offer = Self::open_offer(&mut book, offer_id, driver_id, now)?;
            offer.accepting = true;
            offer.trip_id.clone()
        };
        let change = Change::Accept {
            driver_id: driver_id.to_string(),
        };
        let result = self.store.transition(&trip_id, &change, |_| Ok(())).await;
        {
            let mut book = self.book.lock().unwrap();
            let mut fleet = self.fleet.lock().unwrap();
            book.offers.remove(offer_id);
            fleet.release(driver_id, offer_id);
            match &result {
                Ok(_) => {
                    book.remember(offer_id, driver_id, Answer::Accepted);
                    book.trips.remove(&trip_id);
                    fleet.set_trip(driver_id, Some(trip_id.clone()));
                }
                Err(_) => {
                    book.remember(offer_id, driver_id, Answer::Withdrawn);
                    if let Some(pending) = book.trips.get_mut(&trip_id) {
                        pending.offer = None;
                        pending.next_search = now;
                    }
                }
            }
        }
        // Either way the driver's reservation ended: it is busy now, or free for others.
        self.driver_available();
        match result {
            Ok(transition) => {
                self.record_offer(OfferOutcome::accepted, offer_id, &trip_id, driver_id, None);
                self.metrics.transition(transition.event.event.as_str());
                self.hub.publish(&transition.event, None);
                Ok(transition.event)
            }
            Err(StoreError::InvalidTransition(_) | StoreError::NotFound) => {
                self.record_offer(OfferOutcome::withdrawn, offer_id, &trip_id, driver_id, None);
                Err(ApiError::conflict(
                    "offer_expired",
                    "the trip is no longer available",
                ))
            }
            Err(error) => Err(error.into()),
        }
    }

    pub async fn decline(
        &self,
        offer_id: &str,
        driver_id: &str,
        now: Instant,
    ) -> Result<(), ApiError> {
        let trip_id = {
            let mut book = self.book.lock().unwrap();
            let trip_id = Self::open_offer(&mut book, offer_id, driver_id, now)?
                .trip_id
                .clone();
            book.offers.remove(offer_id);
            book.remember(offer_id, driver_id, Answer::Declined);
            if let Some(pending) = book.trips.get_mut(&trip_id) {
                pending.offer = None;
                pending.excluded.insert(driver_id.to_string());
                pending.next_search = now;
            }
            self.fleet.lock().unwrap().release(driver_id, offer_id);
            trip_id
        };
        self.record_offer(OfferOutcome::declined, offer_id, &trip_id, driver_id, None);
        // The driver is free again, for the other waiting trips too.
        self.driver_available();
        self.store
            .add_exclusion(&trip_id, driver_id, "declined")
            .await
            .map_err(ApiError::from)
    }

    /// The trip left `requested` by other means than an offer (cancelled, assigned by an
    /// operator): stop dispatching it and withdraw its open offer.
    pub fn trip_closed(&self, trip_id: &str, reason: WithdrawReason) {
        let mut book = self.book.lock().unwrap();
        let Some(pending) = book.trips.remove(trip_id) else {
            return;
        };
        let Some(offer_id) = pending.offer else {
            return;
        };
        self.withdraw(&mut book, &offer_id, reason);
    }

    /// Withdraws the open offer a driver holds, if any (it was just assigned another trip).
    pub fn withdraw_offer_of(&self, driver_id: &str, reason: WithdrawReason, now: Instant) {
        let mut book = self.book.lock().unwrap();
        let offer_id = book
            .offers
            .iter()
            .find(|(_, o)| o.driver_id == driver_id && !o.accepting)
            .map(|(id, _)| id.clone());
        if let Some(offer_id) = offer_id {
            let trip_id = book.offers[&offer_id].trip_id.clone();
            self.withdraw(&mut book, &offer_id, reason);
            if let Some(pending) = book.trips.get_mut(&trip_id) {
                pending.offer = None;
                pending.next_search = now;
            }
            self.wake();
        }
    }

    fn withdraw(&self, book: &mut Book, offer_id: &str, reason: WithdrawReason) {
        let Some(offer) = book.offers.get(offer_id) else {
            return;
        };
        if offer.accepting {
            // The store decides that race; the accept will fail against the new version.
            return;
        }
        let offer = book.offers.remove(offer_id).expect("checked above");
        self.fleet
            .lock()
            .unwrap()
            .release(&offer.driver_id, offer_id);
        book.remember(offer_id, &offer.driver_id, Answer::Withdrawn);
        self.record_offer(
            OfferOutcome::withdrawn,
            offer_id,
            &offer.trip_id,
            &offer.driver_id,
            None,
        );
        // The driver is free for the other waiting trips.
        self.driver_available();
        self.hub.send_to_driver(
            &offer.driver_id,
            ServerMessage::OfferWithdrawn {
                offer_id: offer_id.to_string(),
                reason,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(lat: f64, lng: f64) -> LatLng {
        LatLng::new(lat, lng).unwrap()
    }

    #[test]
    fn ranking_prefers_the_innermost_radius_then_eta() {
        let pickup = p(37.5, 127.0);
        let eta = StraightLineEta {
            detour_factor: 1.3,
            speed_mps: 7.0,
        };
        let nearest = vec![
            Candidate {
                driver_id: "a".into(),
                distance_m: 1_000.0,
            },
            Candidate {
                driver_id: "b".into(),
                distance_m: 2_000.0,
            },
            Candidate {
                driver_id: "c".into(),
                distance_m: 5_000.0,
            },
        ];
        let ranked = rank_candidates(nearest, &[3_000.0, 6_000.0], pickup, |_| None, &eta);
        let ids: Vec<&str> = ranked.iter().map(|c| &*c.driver_id).collect();
        assert_eq!(ids, ["a", "b"]);
        assert!((ranked[0].eta_s - 1_000.0 * 1.3 / 7.0).abs() < 1e-9);
        assert_eq!(ranked[0].radius_m, 3_000.0);
    }

    #[test]
    fn ranking_widens_when_the_inner_radius_is_empty() {
        let pickup = p(37.5, 127.0);
        let eta = StraightLineEta {
            detour_factor: 1.0,
            speed_mps: 10.0,
        };
        let nearest = vec![Candidate {
            driver_id: "far".into(),
            distance_m: 8_000.0,
        }];
        let ranked = rank_candidates(
            nearest.clone(),
            &[3_000.0, 6_000.0, 10_000.0],
            pickup,
            |_| None,
            &eta,
        );
        assert_eq!(ranked.len(), 1);
        assert_eq!(ranked[0].radius_m, 10_000.0);
        assert!(rank_candidates(nearest, &[3_000.0, 6_000.0], pickup, |_| None, &eta).is_empty());
    }

    /// A router that knows one driver is across a river: its ETA beats distance order.
    #[test]
    fn ranking_follows_the_eta_model_not_distance() {
        struct River;
        impl Eta for River {
            fn pickup_eta_s(&self, from: LatLng, _to: LatLng, straight_line_m: f64) -> f64 {
                if from.lat() > 37.5 {
                    straight_line_m * 10.0
                } else {
                    straight_line_m
                }
            }
        }
        let pickup = p(37.5, 127.0);
        let north = p(37.501, 127.0);
        let south = p(37.498, 127.0);
        let nearest = vec![
            Candidate {
                driver_id: "north".into(),
                distance_m: pickup.distance_m(&north),
            },
            Candidate {
                driver_id: "south".into(),
                distance_m: pickup.distance_m(&south),
            },
        ];
        let positions = |id: &str| Some(if id == "north" { north } else { south });
        let ranked = rank_candidates(nearest, &[3_000.0], pickup, positions, &River);
        assert_eq!(&*ranked[0].driver_id, "south");
    }

    /// Offer lapses and the dispatch deadline, with time driven by the test: nothing
    /// sleeps. (tokio's paused clock does not mix with SQLite's worker thread: while the
    /// runtime waits on it, auto-advance fires the pool's acquire timeout.)
    mod timing {
        use super::*;
        use crate::{
            config::ServerConfig,
            store::{NewTrip, Role},
        };
        use tokio::sync::mpsc::error::TryRecvError;

        struct Rig {
            dispatcher: Dispatcher,
            fleet: Arc<Mutex<FleetIndex>>,
            hub: Arc<Hub>,
            store: Store,
            _dir: tempfile::TempDir,
        }

        async fn rig() -> Rig {
            let dir = tempfile::tempdir().unwrap();
            let url = format!("sqlite://{}", dir.path().join("t.db").display());
            let config = ServerConfig::new("127.0.0.1:0".parse().unwrap(), url.clone());
            let store = Store::connect(&url, 1, Duration::from_secs(5))
                .await
                .unwrap();
            let fleet = Arc::new(Mutex::new(FleetIndex::new(Duration::from_millis(
                config.dispatch.stale_after_ms,
            ))));
            let hub = Arc::new(Hub::new(Default::default()));
            let dispatcher = Dispatcher::new(
                config.dispatch.clone(),
                fleet.clone(),
                store.clone(),
                hub.clone(),
                Arc::new(Metrics::new()),
            );
            Rig {
                dispatcher,
                fleet,
                hub,
                store,
                _dir: dir,
            }
        }

        /// A driver online `metres_north` of the pickup, last heard from at `at`.
        async fn driver_at(
            rig: &Rig,
            metres_north: f64,
            at: Instant,
        ) -> (String, tokio::sync::mpsc::Receiver<ServerMessage>) {
            let account = rig
                .store
                .create_account(Role::Driver, "d", Some("p"))
                .await
                .unwrap();
            let mut fleet = rig.fleet.lock().unwrap();
            fleet.connect(&account.id, None, at);
            fleet.ping(
                &account.id,
                p(37.5 + metres_north / 111_195.0, 127.0),
                None,
                at,
            );
            drop(fleet);
            let (_, receiver) = rig.hub.register_driver(&account.id);
            (account.id, receiver)
        }

        async fn request(rig: &Rig) -> Trip {
            let passenger = rig
                .store
                .create_account(Role::Passenger, "p", None)
                .await
                .unwrap();
            let new = NewTrip {
                passenger_id: passenger.id,
                pickup: p(37.5, 127.0),
                dropoff: p(37.55, 127.0),
                fare_estimate: Money {
                    amount: 10_000,
                    currency: "KRW".into(),
                },
                idempotency_key: None,
            };
            let crate::store::Creation::Created(event) = rig.store.create_trip(new).await.unwrap()
            else {
                panic!("a new trip")
            };
            let trip = event.trip;
            rig.dispatcher.submit(&trip, [], Instant::now());
            trip
        }

        fn offer_id(message: ServerMessage) -> String {
            match message {
                ServerMessage::Offer(offer) => offer.offer_id,
                other => panic!("expected an offer, got {other:?}"),
            }
        }

        #[tokio::test]
        async fn an_offer_lapses_at_its_deadline_not_before() {
            let rig = rig().await;
            let (near, mut near_inbox) = driver_at(&rig, 100.0, Instant::now()).await;
            let (_far, mut far_inbox) = driver_at(&rig, 900.0, Instant::now()).await;
            request(&rig).await;
            let start = Instant::now();

            let next = rig.dispatcher.step(start).await;
            assert_eq!(
                next,
                start + Duration::from_millis(15_000),
                "next wake is the offer deadline"
            );
            let first = offer_id(near_inbox.try_recv().unwrap());
            assert!(rig.fleet.lock().unwrap().offer_of(&near).is_some());

            rig.dispatcher
                .step(start + Duration::from_millis(14_999))
                .await;
            assert_eq!(near_inbox.try_recv().unwrap_err(), TryRecvError::Empty);
            assert_eq!(far_inbox.try_recv().unwrap_err(), TryRecvError::Empty);

            rig.dispatcher
                .step(start + Duration::from_millis(15_000))
                .await;
            match near_inbox.try_recv().unwrap() {
                ServerMessage::OfferWithdrawn { offer_id, reason } => {
                    assert_eq!(
                        (offer_id.as_str(), reason),
                        (first.as_str(), WithdrawReason::Expired)
                    );
                }
                other => panic!("{other:?}"),
            }
            assert!(rig.fleet.lock().unwrap().offer_of(&near).is_none());
            // Same pass: on to the next candidate, never back to the first.
            offer_id(far_inbox.try_recv().unwrap());
            let late = rig
                .dispatcher
                .accept(&first, &near, Instant::now())
                .await
                .unwrap_err();
            assert_eq!(late.code, "offer_expired");
        }

        #[tokio::test]
        async fn a_trip_expires_at_the_dispatch_deadline() {
            let rig = rig().await;
            let trip = request(&rig).await;
            let start = Instant::now();
            rig.dispatcher.step(start).await;
            rig.dispatcher
                .step(start + Duration::from_millis(119_000))
                .await;
            assert_eq!(
                rig.store.trip(&trip.id).await.unwrap().unwrap().state,
                TripState::Requested
            );
            // A driver appearing late still gets the offer before the deadline.
            let (_driver, mut inbox) =
                driver_at(&rig, 50.0, start + Duration::from_millis(118_000)).await;
            rig.dispatcher.driver_available();
            rig.dispatcher
                .step(start + Duration::from_millis(119_000))
                .await;
            let offer = offer_id(inbox.try_recv().unwrap());
            rig.dispatcher
                .step(start + Duration::from_millis(120_100))
                .await;
            match inbox.try_recv().unwrap() {
                ServerMessage::OfferWithdrawn { offer_id, reason } => {
                    assert_eq!((offer_id, reason), (offer, WithdrawReason::Expired));
                }
                other => panic!("{other:?}"),
            }
            let expired = rig.store.trip(&trip.id).await.unwrap().unwrap();
            assert_eq!((expired.state, expired.seq), (TripState::Expired, 2));
            assert_eq!(rig.dispatcher.pending_trips(), 0);
        }
    }
}
