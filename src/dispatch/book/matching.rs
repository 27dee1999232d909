//! Choosing drivers for waiting trips: the candidates a trip may be offered to, the offer
//! made to the chosen one, and the batched solve (`HAIL_MATCHING=batch`) that weighs a
//! window's trips together. Part of the book: the same rules, the same state.

use std::collections::HashMap;

use tokio::time::Instant;

use super::{Book, Effect, FleetView, OpenOffer, Pending, Policy};
use crate::{
    dispatch::{
        batch,
        rank::{self, RankedCandidate},
    },
    fleet::{Candidate, DriverId},
    ids::new_id,
    protocol::{OfferMessage, operators::BatchInfo},
    store::NewOffer,
    trip::Timestamp,
};

/// The nearest drivers a waiting trip may be offered to: dispatchable, within the
/// outermost radius, holding no offer, and not excluded from it.
pub(super) fn candidates(
    policy: &Policy,
    fleet: &dyn FleetView,
    pending: &Pending,
    reserved: &HashMap<String, String>,
    now: Instant,
) -> Vec<Candidate> {
    let outermost = policy.radii_m.iter().copied().fold(0.0, f64::max);
    let exclude =
        |driver_id: &str| reserved.contains_key(driver_id) || pending.excluded.contains(driver_id);
    fleet.nearest_available(
        pending.pickup,
        outermost,
        policy.max_candidates,
        now,
        &exclude,
    )
}

/// The driver a trip is offered to, and how it was chosen.
pub(super) struct Chosen<'a> {
    pub candidate: &'a RankedCandidate,
    /// 1 = the trip's best by ETA.
    pub rank: usize,
    pub candidates: usize,
    pub batch: Option<BatchInfo>,
}

/// The offer of `chosen` for a waiting trip: the effect that writes and delivers it, its
/// id, and what the book keeps of it while open. Marks the trip offered.
pub(super) fn offer_effect(
    policy: &Policy,
    trip_id: &str,
    pending: &mut Pending,
    chosen: Chosen<'_>,
    now: Instant,
    wall: Timestamp,
) -> (Effect, String, OpenOffer) {
    let best = chosen.candidate;
    let offer_id = new_id("ofr");
    let expires_at = now + policy.offer_timeout;
    let offer = NewOffer {
        id: offer_id.clone(),
        trip_id: trip_id.to_string(),
        driver_id: best.driver_id.to_string(),
        made_at: wall,
        expires_at: wall.plus_ms(policy.offer_timeout.as_millis() as u64),
        pickup_distance_m: best.distance_m,
        pickup_eta_s: best.eta_s,
        rank: chosen.rank as u32,
        candidates: chosen.candidates as u32,
        radius_m: best.radius_m,
        batch: chosen.batch,
    };
    let message = OfferMessage {
        offer_id: offer_id.clone(),
        trip_id: trip_id.to_string(),
        pickup: pending.pickup,
        dropoff: pending.dropoff,
        pickup_distance_m: best.distance_m.round(),
        pickup_eta_s: best.eta_s.round(),
        fare_estimate: pending.fare_estimate.clone(),
        expires_at: offer.expires_at,
    };
    let first_after = (!pending.offered).then(|| now - pending.since);
    pending.offered = true;
    pending.offer = Some(offer_id.clone());
    let open = OpenOffer {
        trip_id: trip_id.to_string(),
        driver_id: offer.driver_id.clone(),
        expires_at,
        withdraw: false,
        closing: false,
    };
    let effect = Effect::Offer {
        offer,
        message,
        first_after,
    };
    (effect, offer_id, open)
}

impl Book {
    /// Batched matching: the waiting trips of the window that just closed (the oldest
    /// first, at most `max_trips`) each with its nearest candidates, assigned together for
    /// the most trips matched at the least total pickup ETA ([`batch::assign`]). A trip
    /// left unmatched waits for the next window.
    pub(super) fn solve_batch(
        &mut self,
        mut due: Vec<String>,
        fleet: &dyn FleetView,
        now: Instant,
        wall: Timestamp,
    ) -> Vec<Effect> {
        let Some(policy) = self.policy.batch else {
            return Vec::new();
        };
        let started = std::time::Instant::now();
        due.sort_by_key(|trip_id| self.trips.get(trip_id).map(|p| p.since));
        due.truncate(policy.max_trips);
        let mut drivers: Vec<DriverId> = Vec::new();
        let mut index_of: HashMap<DriverId, usize> = HashMap::new();
        let mut ranked_per_trip = Vec::with_capacity(due.len());
        let mut options = Vec::with_capacity(due.len());
        for trip_id in &due {
            let Some(pending) = self.trips.get(trip_id) else {
                ranked_per_trip.push(Vec::new());
                options.push(Vec::new());
                continue;
            };
            let nearest = candidates(&self.policy, fleet, pending, &self.reserved, now);
            let ranked = rank::rank_all(&nearest, &self.policy.radii_m, pending.pickup, &*self.eta);
            options.push(
                ranked
                    .iter()
                    .map(|candidate| {
                        let next = drivers.len();
                        let index =
                            *index_of
                                .entry(candidate.driver_id.clone())
                                .or_insert_with(|| {
                                    drivers.push(candidate.driver_id.clone());
                                    next
                                });
                        (index, (candidate.eta_s * 1_000.0).round() as i64)
                    })
                    .collect(),
            );
            ranked_per_trip.push(ranked);
        }
        let (assigned, part_size) = batch::assign(&options, drivers.len());
        let solve_us = started.elapsed().as_micros() as u64;
        let mut effects = Vec::new();
        for trip_id in &due {
            // Unmatched: weighed again when the next window closes (or a driver frees).
            if let Some(pending) = self.trips.get_mut(trip_id) {
                pending.next_search = now + policy.window;
            }
        }
        for (position, driver) in assigned.into_iter().enumerate() {
            let trip_id = &due[position];
            let (Some(driver), Some(pending)) = (driver, self.trips.get_mut(trip_id)) else {
                continue;
            };
            let ranked = &ranked_per_trip[position];
            let Some(rank) = ranked.iter().position(|c| *c.driver_id == *drivers[driver]) else {
                continue;
            };
            let chosen = Chosen {
                candidate: &ranked[rank],
                rank: rank + 1,
                candidates: ranked.len(),
                batch: Some(BatchInfo {
                    window_ms: policy.window.as_millis() as u64,
                    size: part_size[position] as u32,
                    solve_us,
                }),
            };
            let (effect, offer_id, open) =
                offer_effect(&self.policy, trip_id, pending, chosen, now, wall);
            self.reserved
                .insert(open.driver_id.clone(), offer_id.clone());
            self.offers.insert(offer_id, open);
            effects.push(effect);
        }
        effects
    }
}
