//! The fleet index: every online driver, where it is, and whether it can take a ride.
//!
//! In memory, a cache and never the source of truth (DESIGN §1): after a restart drivers
//! re-ping and the index refills. Pure: no I/O, no clock of its own — callers pass `now`,
//! so tests drive time by hand.
//!
//! Positions are indexed as unit vectors on the sphere in an `rstar` R-tree. A moving
//! driver costs a remove + insert in an R-tree, so each driver is stored with a *slack
//! box* around it: a ping that stays inside the box only updates the slot, and the tree is
//! touched only when the driver leaves it. Queries walk the tree in order of distance to
//! the boxes — a lower bound of the true distance — and stop once that bound exceeds the
//! k-th best true distance found.

use std::{
    collections::{BinaryHeap, HashMap, VecDeque},
    sync::Arc,
    time::Duration,
};

use rstar::{AABB, Envelope, PointDistance, RTree, RTreeObject};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use utoipa::ToSchema;

use crate::geometry::{self, LatLng};

/// Half the side of a driver's slack box, in metres. A taxi at 15 m/s pinging every 4 s
/// moves 60 m a ping, so most pings stay inside; a larger box would make queries visit
/// more false candidates.
pub const SLACK_M: f64 = 150.0;

/// What the driver asked to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DriverStatus {
    Available,
    Offline,
}

/// What an operator sees of a driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DriverState {
    /// Dispatchable.
    Available,
    /// Holds an open offer.
    Offered,
    /// Holds an active trip.
    Busy,
    /// Online but said it is not taking rides.
    Offline,
    /// No ping for longer than the staleness limit.
    Stale,
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct DriverView {
    pub id: String,
    pub state: DriverState,
    pub status: DriverStatus,
    pub position: Option<LatLng>,
    pub heading_deg: Option<f64>,
    pub trip_id: Option<String>,
    pub offer_id: Option<String>,
    pub connected: bool,
}

#[derive(Debug, Clone)]
struct Slot {
    id: Arc<str>,
    position: Option<LatLng>,
    unit: [f64; 3],
    heading_deg: Option<f64>,
    status: DriverStatus,
    trip_id: Option<String>,
    offer_id: Option<String>,
    last_ping: Instant,
    /// Open sockets of this driver (a reconnect may briefly overlap the old socket).
    sockets: u32,
    /// The box this driver is stored under in the tree; `None` when not in the tree.
    indexed: Option<AABB<[f64; 3]>>,
    /// Metres driven since the trip started, and whether every metre was seen (a restart
    /// mid-trip loses the count).
    odometer_m: f64,
    odometer_complete: bool,
    /// The fleet clock at this slot's last change.
    version: u64,
}

#[derive(Debug, Clone, PartialEq)]
struct Entry {
    slot: u32,
    envelope: AABB<[f64; 3]>,
}

impl RTreeObject for Entry {
    type Envelope = AABB<[f64; 3]>;
    fn envelope(&self) -> Self::Envelope {
        self.envelope
    }
}

impl PointDistance for Entry {
    /// Distance to the slack box: a lower bound of the distance to the driver.
    fn distance_2(&self, point: &[f64; 3]) -> f64 {
        self.envelope.distance_2(point)
    }
}

/// A driver the dispatcher may offer a trip to.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub driver_id: Arc<str>,
    pub distance_m: f64,
}

/// What a location ping changed.
#[derive(Debug, Clone, PartialEq)]
pub struct PingOutcome {
    /// The driver's active trip, so its passenger can see the car coming.
    pub trip_id: Option<String>,
    /// The driver was not dispatchable before this ping and is now.
    pub became_dispatchable: bool,
}

pub struct FleetIndex {
    tree: RTree<Entry>,
    slots: Vec<Option<Slot>>,
    free_slots: Vec<u32>,
    by_id: HashMap<Arc<str>, u32>,
    slack_chord: f64,
    stale_after: Duration,
    /// Counts changes; see [`FleetIndex::changed_since`].
    clock: u64,
    /// Drivers that went offline, with the clock at their removal. Bounded: a reader
    /// further behind than this log reaches gets a full view instead.
    removed: VecDeque<(u64, Arc<str>)>,
}

/// Most removals remembered for [`FleetIndex::changed_since`].
const REMOVED_LOG: usize = 100_000;

/// What changed in the fleet since a reader's last look.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetChanges {
    pub drivers: Vec<DriverView>,
    pub removed: Vec<String>,
    /// Pass this to the next `changed_since`.
    pub version: u64,
}

impl FleetIndex {
    pub fn new(stale_after: Duration) -> FleetIndex {
        FleetIndex {
            tree: RTree::new(),
            slots: Vec::new(),
            free_slots: Vec::new(),
            by_id: HashMap::new(),
            slack_chord: geometry::chord_for_distance_m(SLACK_M),
            stale_after,
            clock: 0,
            removed: VecDeque::new(),
        }
    }

    /// Drivers online (connected, or dropped but inside the grace period).
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    fn slot(&self, driver_id: &str) -> Option<&Slot> {
        let index = *self.by_id.get(driver_id)?;
        self.slots[index as usize].as_ref()
    }

    /// Mutable access counts as a change: the slot gets the next version, which is how
    /// the operator stream finds what moved since its last batch.
    fn slot_mut(&mut self, driver_id: &str) -> Option<(u32, &mut Slot)> {
        let index = *self.by_id.get(driver_id)?;
        self.clock += 1;
        let version = self.clock;
        self.slots[index as usize].as_mut().map(|slot| {
            slot.version = version;
            (index, slot)
        })
    }

    fn is_dispatchable(slot: &Slot, now: Instant, stale_after: Duration) -> bool {
        slot.status == DriverStatus::Available
            && slot.trip_id.is_none()
            && slot.offer_id.is_none()
            && slot.position.is_some()
            && now.saturating_duration_since(slot.last_ping) <= stale_after
    }

    pub fn is_online(&self, driver_id: &str) -> bool {
        self.by_id.contains_key(driver_id)
    }

    pub fn dispatchable(&self, driver_id: &str, now: Instant) -> bool {
        self.slot(driver_id)
            .is_some_and(|slot| Self::is_dispatchable(slot, now, self.stale_after))
    }

    /// A socket of this driver opened. A new driver starts `available` with its trip (if
    /// any) as the store knows it; one coming back inside the grace period keeps its state.
    pub fn connect(&mut self, driver_id: &str, trip_id: Option<String>, now: Instant) {
        if let Some((index, slot)) = self.slot_mut(driver_id) {
            slot.sockets += 1;
            slot.trip_id = trip_id;
            self.reindex(index);
            return;
        }
        let slot = Slot {
            id: Arc::from(driver_id),
            position: None,
            unit: [0.0; 3],
            heading_deg: None,
            status: DriverStatus::Available,
            trip_id,
            offer_id: None,
            last_ping: now,
            sockets: 1,
            indexed: None,
            odometer_m: 0.0,
            odometer_complete: false,
            version: self.clock + 1,
        };
        self.clock += 1;
        let index = match self.free_slots.pop() {
            Some(index) => {
                self.slots[index as usize] = Some(slot);
                index
            }
            None => {
                self.slots.push(Some(slot));
                (self.slots.len() - 1) as u32
            }
        };
        self.by_id.insert(Arc::from(driver_id), index);
    }

    /// A socket of this driver closed. The driver stays until [`Self::sweep_offline`].
    pub fn disconnect(&mut self, driver_id: &str) {
        if let Some((_, slot)) = self.slot_mut(driver_id) {
            slot.sockets = slot.sockets.saturating_sub(1);
        }
    }

    /// Removes drivers whose sockets are all closed and who have not pinged for
    /// `offline_after`. Returns them.
    pub fn sweep_offline(&mut self, now: Instant, offline_after: Duration) -> Vec<String> {
        let gone: Vec<Arc<str>> = self
            .slots
            .iter()
            .flatten()
            .filter(|slot| {
                slot.sockets == 0 && now.saturating_duration_since(slot.last_ping) > offline_after
            })
            .map(|slot| slot.id.clone())
            .collect();
        for id in &gone {
            self.remove(id);
        }
        gone.iter().map(|id| id.to_string()).collect()
    }

    fn remove(&mut self, driver_id: &str) {
        let Some(index) = self.by_id.remove(driver_id) else {
            return;
        };
        self.clock += 1;
        self.removed.push_back((self.clock, Arc::from(driver_id)));
        if self.removed.len() > REMOVED_LOG {
            self.removed.pop_front();
        }
        if let Some(slot) = self.slots[index as usize].take()
            && let Some(envelope) = slot.indexed
        {
            self.tree.remove(&Entry {
                slot: index,
                envelope,
            });
        }
        self.free_slots.push(index);
    }

    /// A location ping. The position is already validated by its type.
    pub fn ping(
        &mut self,
        driver_id: &str,
        position: LatLng,
        heading_deg: Option<f64>,
        now: Instant,
    ) -> Option<PingOutcome> {
        let stale_after = self.stale_after;
        let slack = self.slack_chord;
        let (index, slot) = self.slot_mut(driver_id)?;
        let was_dispatchable = Self::is_dispatchable(slot, now, stale_after);
        if let (Some(previous), Some(_)) = (slot.position, &slot.trip_id) {
            slot.odometer_m += previous.distance_m(&position);
        }
        slot.position = Some(position);
        slot.unit = position.unit_vector();
        slot.heading_deg = heading_deg.filter(|h| h.is_finite());
        slot.last_ping = now;
        let outcome = PingOutcome {
            trip_id: slot.trip_id.clone(),
            became_dispatchable: !was_dispatchable && Self::is_dispatchable(slot, now, stale_after),
        };
        match slot.indexed {
            Some(envelope) if envelope.contains_point(&slot.unit) => {}
            Some(envelope) => {
                let unit = slot.unit;
                let moved = slack_box(unit, slack);
                slot.indexed = Some(moved);
                self.tree.remove(&Entry {
                    slot: index,
                    envelope,
                });
                self.tree.insert(Entry {
                    slot: index,
                    envelope: moved,
                });
            }
            None => self.reindex(index),
        }
        Some(outcome)
    }

    /// Puts a driver in the tree or takes it out, as its state now requires. Only drivers
    /// that said `available`, have a position and no trip are in the tree; offers and
    /// staleness are filtered at query time because they come and go quickly.
    fn reindex(&mut self, index: u32) {
        let slack = self.slack_chord;
        let Some(slot) = self.slots[index as usize].as_mut() else {
            return;
        };
        let belongs = slot.status == DriverStatus::Available
            && slot.trip_id.is_none()
            && slot.position.is_some();
        match (belongs, slot.indexed) {
            (true, None) => {
                let envelope = slack_box(slot.unit, slack);
                slot.indexed = Some(envelope);
                self.tree.insert(Entry {
                    slot: index,
                    envelope,
                });
            }
            (false, Some(envelope)) => {
                slot.indexed = None;
                self.tree.remove(&Entry {
                    slot: index,
                    envelope,
                });
            }
            _ => {}
        }
    }

    /// Returns whether the driver is now dispatchable and was not before.
    pub fn set_status(&mut self, driver_id: &str, status: DriverStatus, now: Instant) -> bool {
        let stale_after = self.stale_after;
        let Some((index, slot)) = self.slot_mut(driver_id) else {
            return false;
        };
        let was = Self::is_dispatchable(slot, now, stale_after);
        slot.status = status;
        slot.last_ping = now;
        let is = Self::is_dispatchable(slot, now, stale_after);
        self.reindex(index);
        is && !was
    }

    /// Reserves a dispatchable driver for an offer. False if it cannot take one.
    pub fn reserve(&mut self, driver_id: &str, offer_id: &str, now: Instant) -> bool {
        let stale_after = self.stale_after;
        match self.slot_mut(driver_id) {
            Some((_, slot)) if Self::is_dispatchable(slot, now, stale_after) => {
                slot.offer_id = Some(offer_id.to_string());
                true
            }
            _ => false,
        }
    }

    /// Ends a reservation, if this offer still holds it.
    pub fn release(&mut self, driver_id: &str, offer_id: &str) {
        if let Some((_, slot)) = self.slot_mut(driver_id)
            && slot.offer_id.as_deref() == Some(offer_id)
        {
            slot.offer_id = None;
        }
    }

    /// The offer a driver holds, if any.
    pub fn offer_of(&self, driver_id: &str) -> Option<String> {
        self.slot(driver_id).and_then(|slot| slot.offer_id.clone())
    }

    /// Attaches a driver to a trip (busy) or frees it (`None`). An offline driver gets a
    /// slot so it is known busy when it connects.
    pub fn set_trip(&mut self, driver_id: &str, trip_id: Option<String>) {
        let Some((index, slot)) = self.slot_mut(driver_id) else {
            return;
        };
        if slot.trip_id != trip_id {
            slot.odometer_m = 0.0;
            slot.odometer_complete = false;
        }
        slot.trip_id = trip_id;
        self.reindex(index);
    }

    /// Starts counting driven distance for the fare (the trip was `started`).
    pub fn start_odometer(&mut self, driver_id: &str) {
        if let Some((_, slot)) = self.slot_mut(driver_id) {
            slot.odometer_m = 0.0;
            slot.odometer_complete = true;
        }
    }

    /// Metres driven since the trip started, if every ping since then was seen here.
    pub fn odometer_m(&self, driver_id: &str) -> Option<f64> {
        self.slot(driver_id)
            .filter(|slot| slot.odometer_complete)
            .map(|slot| slot.odometer_m)
    }

    pub fn position(&self, driver_id: &str) -> Option<LatLng> {
        self.slot(driver_id).and_then(|slot| slot.position)
    }

    /// The up to `k` nearest dispatchable drivers within `radius_m` of `pickup`, nearest
    /// first, skipping those `exclude` names.
    pub fn nearest_available(
        &self,
        pickup: LatLng,
        radius_m: f64,
        k: usize,
        now: Instant,
        exclude: impl Fn(&str) -> bool,
    ) -> Vec<Candidate> {
        if k == 0 {
            return Vec::new();
        }
        let query = pickup.unit_vector();
        let max_chord = geometry::chord_for_distance_m(radius_m);
        let max_squared = max_chord * max_chord;
        // A max-heap of the best k so far keyed by squared chord. Non-negative f64s order
        // like their bit patterns, so the bits serve as an `Ord` key.
        let mut best: BinaryHeap<(u64, u32)> = BinaryHeap::with_capacity(k + 1);
        for (entry, box_squared) in self.tree.nearest_neighbor_iter_with_distance_2(&query) {
            if box_squared > max_squared {
                break;
            }
            if best.len() == k
                && best
                    .peek()
                    .is_some_and(|(worst, _)| box_squared > f64::from_bits(*worst))
            {
                break;
            }
            let Some(slot) = self.slots[entry.slot as usize].as_ref() else {
                continue;
            };
            if !Self::is_dispatchable(slot, now, self.stale_after) || exclude(&slot.id) {
                continue;
            }
            let squared = geometry::squared_distance(&query, &slot.unit);
            if squared > max_squared {
                continue;
            }
            best.push((squared.to_bits(), entry.slot));
            if best.len() > k {
                best.pop();
            }
        }
        let mut found: Vec<Candidate> = best
            .into_iter()
            .filter_map(|(squared, index)| {
                let slot = self.slots[index as usize].as_ref()?;
                Some(Candidate {
                    driver_id: slot.id.clone(),
                    distance_m: geometry::distance_m_for_chord(f64::from_bits(squared).sqrt()),
                })
            })
            .collect();
        found.sort_by(|a, b| a.distance_m.total_cmp(&b.distance_m));
        found
    }

    pub fn view(&self, driver_id: &str, now: Instant) -> Option<DriverView> {
        self.slot(driver_id).map(|slot| self.view_of(slot, now))
    }

    /// Every online driver's state, without copying the drivers.
    pub fn states(&self, now: Instant) -> impl Iterator<Item = DriverState> + '_ {
        self.slots
            .iter()
            .flatten()
            .map(move |slot| self.state_of(slot, now))
    }

    fn state_of(&self, slot: &Slot, now: Instant) -> DriverState {
        if slot.trip_id.is_some() {
            DriverState::Busy
        } else if slot.offer_id.is_some() {
            DriverState::Offered
        } else if slot.status == DriverStatus::Offline {
            DriverState::Offline
        } else if now.saturating_duration_since(slot.last_ping) > self.stale_after {
            DriverState::Stale
        } else {
            DriverState::Available
        }
    }

    fn view_of(&self, slot: &Slot, now: Instant) -> DriverView {
        let state = self.state_of(slot, now);
        DriverView {
            id: slot.id.to_string(),
            state,
            status: slot.status,
            position: slot.position,
            heading_deg: slot.heading_deg,
            trip_id: slot.trip_id.clone(),
            offer_id: slot.offer_id.clone(),
            connected: slot.sockets > 0,
        }
    }

    /// The fleet's current version, for a reader starting from a full view.
    pub fn version(&self) -> u64 {
        self.clock
    }

    /// Drivers changed and removed since `version`; `None` if removals that old were
    /// forgotten (the reader should take a full view).
    pub fn changed_since(&self, version: u64, now: Instant) -> Option<FleetChanges> {
        if self.removed.len() == REMOVED_LOG
            && self.removed.front().is_some_and(|(v, _)| *v > version)
        {
            return None;
        }
        let drivers = self
            .slots
            .iter()
            .flatten()
            .filter(|slot| slot.version > version)
            .map(|slot| self.view_of(slot, now))
            .collect();
        let removed = self
            .removed
            .iter()
            .rev()
            .take_while(|(v, _)| *v > version)
            .map(|(_, id)| id.to_string())
            .collect();
        Some(FleetChanges {
            drivers,
            removed,
            version: self.clock,
        })
    }

    /// Every online driver.
    pub fn views(&self, now: Instant) -> Vec<DriverView> {
        self.slots
            .iter()
            .flatten()
            .map(|slot| self.view_of(slot, now))
            .collect()
    }
}

fn slack_box(unit: [f64; 3], slack: f64) -> AABB<[f64; 3]> {
    AABB::from_corners(
        [unit[0] - slack, unit[1] - slack, unit[2] - slack],
        [unit[0] + slack, unit[1] + slack, unit[2] + slack],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngExt, SeedableRng, rngs::StdRng};

    const STALE: Duration = Duration::from_secs(30);

    fn seoul() -> LatLng {
        LatLng::new(37.5665, 126.9780).unwrap()
    }

    fn online(index: &mut FleetIndex, id: &str, at: LatLng, now: Instant) {
        index.connect(id, None, now);
        index.ping(id, at, None, now).unwrap();
    }

    #[test]
    fn nearest_matches_brute_force_while_drivers_move() {
        let now = Instant::now();
        let mut index = FleetIndex::new(STALE);
        let mut rng = StdRng::seed_from_u64(7);
        let mut positions = HashMap::new();
        for i in 0..2_000 {
            let p = seoul().destination(
                rng.random_range(0.0..360.0),
                rng.random_range(0.0..15_000.0),
            );
            let id = format!("d{i}");
            online(&mut index, &id, p, now);
            positions.insert(id, p);
        }
        for round in 0..5 {
            // Move everyone a little (some inside their box, some out of it).
            for (id, p) in positions.iter_mut() {
                *p = p.destination(rng.random_range(0.0..360.0), rng.random_range(0.0..400.0));
                index.ping(id, *p, None, now).unwrap();
            }
            let pickup = seoul().destination(round as f64 * 70.0, 2_000.0);
            let found = index.nearest_available(pickup, 3_000.0, 8, now, |_| false);
            let mut expected: Vec<(f64, &String)> = positions
                .iter()
                .map(|(id, p)| (pickup.distance_m(p), id))
                .filter(|(d, _)| *d <= 3_000.0)
                .collect();
            expected.sort_by(|a, b| a.0.total_cmp(&b.0));
            expected.truncate(8);
            let found_ids: Vec<&str> = found.iter().map(|c| &*c.driver_id).collect();
            let expected_ids: Vec<&str> = expected.iter().map(|(_, id)| id.as_str()).collect();
            assert_eq!(found_ids, expected_ids, "round {round}");
            for (c, (d, _)) in found.iter().zip(&expected) {
                assert!((c.distance_m - d).abs() < 0.5, "{} vs {d}", c.distance_m);
            }
        }
    }

    #[test]
    fn only_dispatchable_drivers_are_candidates() {
        let now = Instant::now();
        let mut index = FleetIndex::new(STALE);
        let near = seoul().destination(0.0, 100.0);
        for id in [
            "free",
            "offered",
            "busy",
            "offline",
            "excluded",
            "no_position",
        ] {
            if id == "no_position" {
                index.connect(id, None, now);
            } else {
                online(&mut index, id, near, now);
            }
        }
        assert!(index.reserve("offered", "ofr_1", now));
        assert!(!index.reserve("offered", "ofr_2", now), "never two offers");
        index.set_trip("busy", Some("trp_1".into()));
        index.set_status("offline", DriverStatus::Offline, now);
        let found = index.nearest_available(seoul(), 3_000.0, 8, now, |id| id == "excluded");
        let ids: Vec<&str> = found.iter().map(|c| &*c.driver_id).collect();
        assert_eq!(ids, ["free"]);
        assert!((found[0].distance_m - 100.0).abs() < 0.5);

        let states: HashMap<String, DriverState> = index
            .views(now)
            .into_iter()
            .map(|v| (v.id, v.state))
            .collect();
        assert_eq!(states["offered"], DriverState::Offered);
        assert_eq!(states["busy"], DriverState::Busy);
        assert_eq!(states["offline"], DriverState::Offline);

        index.release("offered", "ofr_1");
        index.set_trip("busy", None);
        let found = index.nearest_available(seoul(), 3_000.0, 8, now, |_| false);
        assert_eq!(found.len(), 4);
    }

    #[test]
    fn radius_bounds_the_search() {
        let now = Instant::now();
        let mut index = FleetIndex::new(STALE);
        online(&mut index, "far", seoul().destination(90.0, 4_000.0), now);
        assert!(
            index
                .nearest_available(seoul(), 3_000.0, 8, now, |_| false)
                .is_empty()
        );
        assert_eq!(
            index
                .nearest_available(seoul(), 6_000.0, 8, now, |_| false)
                .len(),
            1
        );
    }

    #[test]
    fn silent_drivers_go_stale_then_offline_after_their_socket_drops() {
        let start = Instant::now();
        let mut index = FleetIndex::new(STALE);
        online(&mut index, "d", seoul(), start);
        let later = start + Duration::from_secs(31);
        assert!(
            index
                .nearest_available(seoul(), 3_000.0, 8, later, |_| false)
                .is_empty()
        );
        assert_eq!(index.view("d", later).unwrap().state, DriverState::Stale);
        assert!(
            index
                .sweep_offline(later + Duration::from_secs(60), Duration::from_secs(60))
                .is_empty(),
            "a connected driver is not swept"
        );
        index.disconnect("d");
        assert!(
            index
                .sweep_offline(start + Duration::from_secs(59), Duration::from_secs(60))
                .is_empty(),
            "inside the grace period"
        );
        assert_eq!(
            index.sweep_offline(start + Duration::from_secs(61), Duration::from_secs(60)),
            ["d"]
        );
        assert!(index.is_empty());
        assert_eq!(index.tree.size(), 0);
    }

    #[test]
    fn odometer_counts_only_a_started_trip() {
        let now = Instant::now();
        let mut index = FleetIndex::new(STALE);
        online(&mut index, "d", seoul(), now);
        index.set_trip("d", Some("trp".into()));
        assert_eq!(index.odometer_m("d"), None);
        index.start_odometer("d");
        let mut p = seoul();
        for _ in 0..10 {
            p = p.destination(90.0, 100.0);
            index.ping("d", p, None, now);
        }
        assert!((index.odometer_m("d").unwrap() - 1_000.0).abs() < 1.0);
    }

    #[test]
    fn changes_are_reported_once_per_reader_version() {
        let now = Instant::now();
        let mut index = FleetIndex::new(STALE);
        online(&mut index, "a", seoul(), now);
        online(&mut index, "b", seoul(), now);
        let start = index.version();
        assert!(index.changed_since(start, now).unwrap().drivers.is_empty());
        index.ping("a", seoul().destination(0.0, 10.0), None, now);
        let changes = index.changed_since(start, now).unwrap();
        let ids: Vec<&str> = changes.drivers.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(ids, ["a"]);
        index.disconnect("b");
        index.sweep_offline(now + Duration::from_secs(120), Duration::from_secs(60));
        let later = index.changed_since(changes.version, now).unwrap();
        assert_eq!(later.removed, ["b"]);
        assert!(later.drivers.iter().all(|d| d.id != "b"));
    }
}
