//! The fleet index: every online driver, where it is, and whether it can take a ride.
//!
//! In memory, a cache and never the source of truth (DESIGN §1): after a restart drivers
//! re-ping and the index refills. Pure: no I/O, no lock, no clock of its own — callers
//! pass `now`, so tests drive time by hand. [`super::Fleet`] is the shared handle.
//!
//! In a cluster every node holds the whole fleet: drivers whose socket is on this node
//! change here first; the others arrive as [`DriverRecord`]s from the node holding them.
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

pub use crate::protocol::operators::{DriverState, DriverStatus, DriverView};
use crate::{
    geometry::{self, LatLng},
    trip::Timestamp,
};

/// Half the side of a driver's slack box, in metres. A taxi at 15 m/s pinging every 4 s
/// moves 60 m a ping, so most pings stay inside; a larger box would make queries visit
/// more false candidates.
pub const SLACK_M: f64 = 150.0;

/// Most removals remembered for [`FleetIndex::changed_since`].
const REMOVED_LOG: usize = 100_000;

#[derive(Debug, Clone)]
struct Slot {
    id: Arc<str>,
    position: Option<LatLng>,
    unit: [f64; 3],
    heading_deg: Option<f64>,
    status: DriverStatus,
    trip_id: Option<String>,
    /// The open offer the driver holds, as last announced (for operators; the dispatcher
    /// keeps its own book of reservations).
    offer_id: Option<String>,
    last_ping: Instant,
    /// Open sockets of this driver: on this node (a reconnect may briefly overlap the old
    /// socket), or 1/0 for connected/not as the holding node last said.
    sockets: u32,
    /// The node holding the driver's socket; `None` for this node.
    node: Option<Arc<str>>,
    /// When the holding node's socket opened (wall clock): of two nodes claiming a
    /// driver, the later connection wins.
    connected_since: Timestamp,
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
    pub position: LatLng,
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

/// Whether a change made a driver dispatchable, or took that away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Availability {
    pub gained: bool,
    pub lost: bool,
}

/// A driver as the node holding its socket describes it to the other nodes: its whole
/// state, so a lost or repeated record does no harm — the next one sets things right.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriverRecord {
    pub driver_id: String,
    pub connected: bool,
    /// When the socket opened, for "the later connection wins".
    pub connected_since: Timestamp,
    pub status: DriverStatus,
    pub position: Option<LatLng>,
    pub heading_deg: Option<f64>,
    /// How long before sending the driver last pinged: the receiver places the ping on its
    /// own clock, so a record that waited in the bus is not taken for fresh.
    pub silent_ms: u64,
    /// The driver went offline for good (swept after its grace period).
    pub gone: bool,
}

/// What changed in the fleet since a reader's last look.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetChanges {
    pub drivers: Vec<DriverView>,
    pub removed: Vec<String>,
    /// Pass this to the next `changed_since`.
    pub version: u64,
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
            && slot.position.is_some()
            // An offer could not reach a driver without a live socket (DESIGN §4).
            && slot.sockets > 0
            && now.saturating_duration_since(slot.last_ping) <= stale_after
    }

    pub fn is_online(&self, driver_id: &str) -> bool {
        self.by_id.contains_key(driver_id)
    }

    pub fn dispatchable(&self, driver_id: &str, now: Instant) -> bool {
        self.slot(driver_id)
            .is_some_and(|slot| Self::is_dispatchable(slot, now, self.stale_after))
    }

    fn new_slot(&mut self, driver_id: &str, now: Instant) -> u32 {
        self.clock += 1;
        let slot = Slot {
            id: Arc::from(driver_id),
            position: None,
            unit: [0.0; 3],
            heading_deg: None,
            status: DriverStatus::Available,
            trip_id: None,
            offer_id: None,
            last_ping: now,
            sockets: 0,
            node: None,
            connected_since: Timestamp::default(),
            indexed: None,
            odometer_m: 0.0,
            odometer_complete: false,
            version: self.clock,
        };
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
        index
    }

    /// A socket of this driver opened on this node. A new driver starts `available` with
    /// its trip (if any) as the store knows it; one coming back inside the grace period
    /// keeps its state.
    pub fn connect(
        &mut self,
        driver_id: &str,
        trip_id: Option<String>,
        now: Instant,
        wall: Timestamp,
    ) {
        let index = match self.by_id.get(driver_id) {
            Some(&index) => index,
            None => self.new_slot(driver_id, now),
        };
        let (_, slot) = self.slot_mut(driver_id).expect("created above");
        if slot.node.is_some() {
            // It was held elsewhere: this connection is the newer one.
            slot.node = None;
            slot.sockets = 0;
        }
        slot.sockets += 1;
        slot.connected_since = wall;
        slot.last_ping = now;
        slot.trip_id = trip_id;
        self.reindex(index);
    }

    /// A socket of this driver closed on this node. The driver stays until
    /// [`Self::sweep_offline`].
    pub fn disconnect(&mut self, driver_id: &str) {
        if let Some((_, slot)) = self.slot_mut(driver_id)
            && slot.node.is_none()
        {
            slot.sockets = slot.sockets.saturating_sub(1);
        }
    }

    /// Removes drivers with no live socket who have not pinged for `offline_after`.
    /// Returns them.
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

    /// A location ping. The position is already validated by its type; a heading is kept
    /// in [0, 360) or dropped if not finite.
    pub fn ping(
        &mut self,
        driver_id: &str,
        position: LatLng,
        heading_deg: Option<f64>,
        now: Instant,
    ) -> Option<PingOutcome> {
        let stale_after = self.stale_after;
        let (index, slot) = self.slot_mut(driver_id)?;
        let was_dispatchable = Self::is_dispatchable(slot, now, stale_after);
        if let (Some(previous), Some(_)) = (slot.position, &slot.trip_id) {
            slot.odometer_m += previous.distance_m(&position);
        }
        slot.position = Some(position);
        slot.unit = position.unit_vector();
        slot.heading_deg = normal_heading(heading_deg);
        slot.last_ping = now;
        let outcome = PingOutcome {
            trip_id: slot.trip_id.clone(),
            became_dispatchable: !was_dispatchable && Self::is_dispatchable(slot, now, stale_after),
        };
        self.moved(index);
        Some(outcome)
    }

    /// Keeps the tree in step with a slot whose position changed.
    fn moved(&mut self, index: u32) {
        let slack = self.slack_chord;
        let Some(slot) = self.slots[index as usize].as_mut() else {
            return;
        };
        match slot.indexed {
            Some(envelope) if envelope.contains_point(&slot.unit) => {}
            Some(envelope) => {
                let moved = slack_box(slot.unit, slack);
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
    }

    /// Puts a driver in the tree or takes it out, as its state now requires. Only drivers
    /// that said `available`, have a position and no trip are in the tree; offers,
    /// sockets and staleness are filtered at query time because they come and go quickly.
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

    /// The driver says whether it takes rides.
    pub fn set_status(
        &mut self,
        driver_id: &str,
        status: DriverStatus,
        now: Instant,
    ) -> Availability {
        let stale_after = self.stale_after;
        let Some((index, slot)) = self.slot_mut(driver_id) else {
            return Availability::default();
        };
        let was = Self::is_dispatchable(slot, now, stale_after);
        slot.status = status;
        slot.last_ping = now;
        let is = Self::is_dispatchable(slot, now, stale_after);
        self.reindex(index);
        Availability {
            gained: is && !was,
            lost: was && !is,
        }
    }

    /// Records the open offer a driver holds (`Some`), or that this offer closed (`None`
    /// clears only `offer_id`'s reservation, not a newer one).
    pub fn set_offer(&mut self, driver_id: &str, offer_id: &str, open: bool) {
        if let Some((_, slot)) = self.slot_mut(driver_id) {
            if open {
                slot.offer_id = Some(offer_id.to_string());
            } else if slot.offer_id.as_deref() == Some(offer_id) {
                slot.offer_id = None;
            }
        }
    }

    /// The offer a driver holds, as last announced.
    pub fn offer_of(&self, driver_id: &str) -> Option<String> {
        self.slot(driver_id).and_then(|slot| slot.offer_id.clone())
    }

    /// Attaches a driver to a trip (busy) or frees it (`None`).
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

    /// The record this node publishes for a driver whose socket it holds; `None` for a
    /// driver it does not hold (or does not know).
    pub fn record(&self, driver_id: &str, now: Instant) -> Option<DriverRecord> {
        let slot = self.slot(driver_id).filter(|slot| slot.node.is_none())?;
        Some(DriverRecord {
            driver_id: driver_id.to_string(),
            connected: slot.sockets > 0,
            connected_since: slot.connected_since,
            status: slot.status,
            position: slot.position,
            heading_deg: slot.heading_deg,
            silent_ms: now.saturating_duration_since(slot.last_ping).as_millis() as u64,
            gone: false,
        })
    }

    /// Applies what `node` says of a driver whose socket it holds. Returns whether the
    /// driver became dispatchable or stopped being so, and, if this node held the driver
    /// too, that its local socket is now superseded (the driver moved to `node`).
    pub fn apply_record(
        &mut self,
        node: &Arc<str>,
        record: &DriverRecord,
        now: Instant,
    ) -> (Availability, bool) {
        let known = self.slot(&record.driver_id).map(|slot| {
            (
                slot.node.as_deref() == Some(&**node),
                slot.node.is_none() && slot.sockets > 0,
                slot.connected_since,
            )
        });
        match known {
            // The node holding the driver: its records arrive in order, the newest last.
            Some((true, _, _)) => {}
            // The driver connected there after it connected where we thought it was.
            Some((false, _, since))
                if record.connected && !record.gone && record.connected_since >= since => {}
            // Older news (the driver reconnected since, here or on a third node).
            Some(_) => return (Availability::default(), false),
            None if record.gone => return (Availability::default(), false),
            None => {}
        }
        if record.gone {
            let lost = self.dispatchable(&record.driver_id, now);
            self.remove(&record.driver_id);
            return (
                Availability {
                    gained: false,
                    lost,
                },
                false,
            );
        }
        let superseded = known.is_some_and(|(_, held_here, _)| held_here);
        let index = match self.by_id.get(record.driver_id.as_str()) {
            Some(&index) => index,
            None => self.new_slot(&record.driver_id, now),
        };
        let stale_after = self.stale_after;
        let (_, slot) = self.slot_mut(&record.driver_id).expect("created above");
        let was = Self::is_dispatchable(slot, now, stale_after);
        slot.node = Some(node.clone());
        slot.sockets = u32::from(record.connected);
        slot.connected_since = record.connected_since;
        slot.status = record.status;
        slot.heading_deg = record.heading_deg;
        slot.last_ping = now
            .checked_sub(Duration::from_millis(record.silent_ms))
            .unwrap_or(now);
        if let Some(position) = record.position {
            if let (Some(previous), Some(_)) = (slot.position, &slot.trip_id) {
                slot.odometer_m += previous.distance_m(&position);
            }
            slot.position = Some(position);
            slot.unit = position.unit_vector();
        }
        let is = Self::is_dispatchable(slot, now, stale_after);
        self.reindex(index);
        self.moved(index);
        (
            Availability {
                gained: is && !was,
                lost: was && !is,
            },
            superseded,
        )
    }

    /// A node went silent: the drivers it held have no live socket anywhere we know of.
    /// Returns them.
    pub fn node_lost(&mut self, node: &str) -> Vec<String> {
        let held: Vec<Arc<str>> = self
            .slots
            .iter()
            .flatten()
            .filter(|slot| slot.node.as_deref() == Some(node) && slot.sockets > 0)
            .map(|slot| slot.id.clone())
            .collect();
        for id in &held {
            if let Some((_, slot)) = self.slot_mut(id) {
                slot.sockets = 0;
            }
        }
        held.iter().map(|id| id.to_string()).collect()
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
                    position: slot.position?,
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

    /// Drivers whose socket is on this node, and how many of them are connected.
    pub fn held_here(&self) -> (usize, usize) {
        self.slots
            .iter()
            .flatten()
            .filter(|slot| slot.node.is_none())
            .fold((0, 0), |(held, connected), slot| {
                (held + 1, connected + usize::from(slot.sockets > 0))
            })
    }

    fn state_of(&self, slot: &Slot, now: Instant) -> DriverState {
        if slot.trip_id.is_some() {
            DriverState::Busy
        } else if slot.offer_id.is_some() {
            DriverState::Offered
        } else if slot.status == DriverStatus::Offline {
            DriverState::Offline
        } else if slot.sockets == 0
            || now.saturating_duration_since(slot.last_ping) > self.stale_after
        {
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
            node: slot.node.as_deref().map(str::to_string),
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

/// A heading in [0, 360), or none if it is not a finite number.
fn normal_heading(heading_deg: Option<f64>) -> Option<f64> {
    heading_deg
        .filter(|h| h.is_finite())
        .map(|h| h.rem_euclid(360.0))
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
        index.connect(id, None, now, Timestamp(1));
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
                index.connect(id, None, now, Timestamp(1));
            } else {
                online(&mut index, id, near, now);
            }
        }
        index.set_offer("offered", "ofr_1", true);
        index.set_trip("busy", Some("trp_1".into()));
        index.set_status("offline", DriverStatus::Offline, now);
        online(&mut index, "dropped", near, now);
        index.disconnect("dropped");
        // Offers are the dispatcher's to exclude: the index only knows who could take one.
        let found = index.nearest_available(seoul(), 3_000.0, 8, now, |id| {
            id == "excluded" || id == "offered"
        });
        let ids: Vec<&str> = found.iter().map(|c| &*c.driver_id).collect();
        assert_eq!(
            ids,
            ["free"],
            "no trip, available, positioned and connected"
        );
        assert!((found[0].distance_m - 100.0).abs() < 0.5);

        let states: HashMap<String, DriverState> = index
            .views(now)
            .into_iter()
            .map(|v| (v.id, v.state))
            .collect();
        assert_eq!(states["offered"], DriverState::Offered);
        assert_eq!(states["busy"], DriverState::Busy);
        assert_eq!(states["offline"], DriverState::Offline);
        assert_eq!(states["dropped"], DriverState::Stale);

        index.set_offer("offered", "ofr_1", false);
        assert_eq!(index.offer_of("offered"), None);
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
    fn headings_are_kept_in_a_circle() {
        assert_eq!(
            normal_heading(Some(1e308)),
            Some(1e308f64.rem_euclid(360.0))
        );
        assert_eq!(normal_heading(Some(-90.0)), Some(270.0));
        assert_eq!(normal_heading(Some(f64::NAN)), None);
        assert!(normal_heading(Some(1e308)).is_some_and(|h| (0.0..360.0).contains(&h)));
    }

    /// Another node's records: the node holding a driver is believed, older news from a
    /// node the driver left is not, and a driver moving here supersedes nothing there.
    #[test]
    fn records_from_other_nodes_follow_the_newest_connection() {
        let now = Instant::now();
        let mut index = FleetIndex::new(STALE);
        let b: Arc<str> = Arc::from("node_b");
        let c: Arc<str> = Arc::from("node_c");
        let record = |connected, since, gone| DriverRecord {
            driver_id: "d".into(),
            connected,
            connected_since: Timestamp(since),
            status: DriverStatus::Available,
            position: Some(seoul()),
            heading_deg: None,
            silent_ms: 0,
            gone,
        };
        let (availability, superseded) = index.apply_record(&b, &record(true, 10, false), now);
        assert!(availability.gained && !superseded);
        assert_eq!(
            index.view("d", now).unwrap().node.as_deref(),
            Some("node_b")
        );
        // The driver reconnects on node c; node b's late "disconnected" is old news.
        index.apply_record(&c, &record(true, 20, false), now);
        let (availability, _) = index.apply_record(&b, &record(false, 10, false), now);
        assert_eq!(availability, Availability::default());
        assert!(index.dispatchable("d", now));
        // Then it connects here: node c's socket is the older one.
        index.connect("d", None, now, Timestamp(30));
        assert_eq!(index.view("d", now).unwrap().node, None);
        let (_, superseded) = index.apply_record(&c, &record(true, 20, false), now);
        assert!(!superseded, "older than our connection: ignored");
        let (_, superseded) = index.apply_record(&c, &record(true, 40, false), now);
        assert!(superseded, "newer than ours: the driver moved to node c");
        // Node c goes silent: its drivers have no live socket.
        assert_eq!(index.node_lost("node_c"), ["d"]);
        assert!(!index.dispatchable("d", now));
        index.apply_record(&c, &record(false, 40, true), now);
        assert!(!index.is_online("d"));
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
