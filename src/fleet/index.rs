//! The fleet index: every online driver, where it is, and whether it can take a ride.
//!
//! In memory, a cache and never the source of truth (DESIGN §1): after a restart drivers
//! re-ping and the index refills. Pure: no I/O, no lock, no clock of its own — callers
//! pass `now`, so tests drive time by hand. [`super::Fleet`] is the shared handle.
//!
//! In a cluster every node holds the whole fleet: drivers whose socket is on this node
//! change here first; the others arrive as [`DriverRecord`]s from the node holding them.
//!
//! Positions are indexed in an `rstar` R-tree whose leaves are blocks of a latitude/longitude
//! grid, each cell's page holding its drivers' query rows ([`pages`]): a ping (found by
//! the [`DriverKey`] its socket holds) inside the driver's cell writes its row, crossing a
//! cell moves the row between two pages, and a query reads a few pages around the pickup,
//! widening until it has k drivers inside the reach it asked for (see `query.rs`).

use std::{collections::VecDeque, sync::Arc, time::Duration};

mod pages;
mod query;
mod remote;
#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

pub use crate::protocol::operators::{DriverState, DriverStatus, DriverView};
use crate::{geometry::LatLng, trip::Timestamp};
use pages::{Driver, Pages, Place};

/// No taxi drives faster between two pings (252 km/h).
pub const DEFAULT_MAX_SPEED_MPS: f64 = 70.0;

/// Most removals remembered for [`FleetIndex::changed_since`].
const REMOVED_LOG: usize = 100_000;

/// Driver ids to slots. foldhash rather than SipHash: every ping looks its driver up, and
/// the ids are the server's own (signed into the driver's token), not an attacker's
/// choice of keys.
type Ids = std::collections::HashMap<Arc<str>, u32, foldhash::fast::RandomState>;

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
    /// The driver's row in the pages; `None` when it is not dispatchable in principle
    /// (not `available`, no position, or on a trip).
    place: Option<Place>,
    /// Distance driven since the trip started; `None` when no count is running (no trip
    /// under way, or this node did not see it start: a restart mid-trip loses the count).
    odometer: Option<Odometer>,
    /// The fleet clock at this slot's last change.
    version: u64,
}

/// What the nearest-driver query reads of a driver whose row made the answer: kept in its
/// own cache line, apart from the slot (whose fields a query would find over three lines),
/// and written with the row (see [`FleetIndex::place`]). Meaningful only while the
/// driver has a row.
#[derive(Debug, Clone)]
#[repr(align(64))]
struct Answer {
    id: DriverId,
    position: Option<LatLng>,
    last_ping: Instant,
}

/// A driver's slot, held by its socket so that a ping finds the driver without hashing
/// its id. Right while the slot holds this driver: the slot keeps the very `Arc` of the
/// id that the key holds (and the key's clone keeps that address from being reused);
/// if the driver left and came back into another slot, the key falls back to its id.
#[derive(Debug, Clone)]
pub struct DriverKey {
    id: Arc<str>,
    slot: u32,
}

impl DriverKey {
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// A driver's id as the nearest-driver query answers with it: held inline up to 24 bytes
/// (the server's ids are 24), so answering copies it instead of following a pointer.
pub type DriverId = compact_str::CompactString;

/// A driver the dispatcher may offer a trip to.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub driver_id: DriverId,
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
    pages: Pages,
    slots: Vec<Option<Slot>>,
    /// By slot, as `slots`.
    answers: Vec<Answer>,
    free_slots: Vec<u32>,
    by_id: Ids,
    stale_after: Duration,
    /// Faster than this between two pings is not driving (see [`Odometer`]).
    max_speed_mps: f64,
    /// Counts changes; see [`FleetIndex::changed_since`].
    clock: u64,
    /// Drivers that went offline, with the clock at their removal. Bounded: a reader
    /// further behind than this log reaches gets a full view instead.
    removed: VecDeque<(u64, Arc<str>)>,
}

impl FleetIndex {
    pub fn new(stale_after: Duration) -> FleetIndex {
        FleetIndex {
            pages: Pages::default(),
            slots: Vec::new(),
            answers: Vec::new(),
            free_slots: Vec::new(),
            by_id: Ids::default(),
            stale_after,
            max_speed_mps: DEFAULT_MAX_SPEED_MPS,
            clock: 0,
            removed: VecDeque::new(),
        }
    }

    /// Sets the speed beyond which a ping is not counted as driven distance.
    pub fn with_max_speed_mps(mut self, max_speed_mps: f64) -> FleetIndex {
        self.max_speed_mps = max_speed_mps;
        self
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

    /// The key of an online driver, for [`Self::ping`].
    pub fn key(&self, driver_id: &str) -> Option<DriverKey> {
        let index = *self.by_id.get(driver_id)?;
        self.key_of(index)
    }

    fn key_of(&self, index: u32) -> Option<DriverKey> {
        self.slots[index as usize].as_ref().map(|slot| DriverKey {
            id: slot.id.clone(),
            slot: index,
        })
    }

    /// The slot a key names: its own, unless the driver has moved to another since.
    fn find(&self, key: &DriverKey) -> Option<u32> {
        match self.slots.get(key.slot as usize) {
            Some(Some(slot)) if Arc::ptr_eq(&slot.id, &key.id) => Some(key.slot),
            _ => self.by_id.get(&*key.id).copied(),
        }
    }

    /// Mutable access counts as a change: the slot gets the next version, which is how
    /// the operator stream finds what moved since its last batch.
    fn slot_mut(&mut self, driver_id: &str) -> Option<(u32, &mut Slot)> {
        let index = *self.by_id.get(driver_id)?;
        self.touch(index)
    }

    fn touch(&mut self, index: u32) -> Option<(u32, &mut Slot)> {
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
        let id: Arc<str> = Arc::from(driver_id);
        let slot = Slot {
            id: id.clone(),
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
            place: None,
            odometer: None,
            version: self.clock,
        };
        let answer = Answer {
            id: DriverId::from(driver_id),
            position: None,
            last_ping: now,
        };
        let index = match self.free_slots.pop() {
            Some(index) => {
                self.slots[index as usize] = Some(slot);
                self.answers[index as usize] = answer;
                index
            }
            None => {
                self.slots.push(Some(slot));
                self.answers.push(answer);
                (self.slots.len() - 1) as u32
            }
        };
        self.by_id.insert(id, index);
        index
    }

    /// A socket of this driver opened on this node. A new driver starts `available` with
    /// its trip (if any) as the store knows it; one coming back inside the grace period
    /// keeps its state. Returns the key its socket pings with.
    pub fn connect(
        &mut self,
        driver_id: &str,
        trip_id: Option<String>,
        now: Instant,
        wall: Timestamp,
    ) -> DriverKey {
        let index = match self.by_id.get(driver_id) {
            Some(&index) => index,
            None => self.new_slot(driver_id, now),
        };
        let (_, slot) = self.touch(index).expect("created above");
        if slot.node.is_some() {
            // It was held elsewhere: this connection is the newer one.
            slot.node = None;
            slot.sockets = 0;
        }
        slot.sockets += 1;
        slot.connected_since = wall;
        slot.last_ping = now;
        slot.trip_id = trip_id;
        self.place(index);
        self.key_of(index).expect("created above")
    }

    /// A socket of this driver closed on this node. The driver stays until
    /// [`Self::sweep_offline`].
    pub fn disconnect(&mut self, driver_id: &str) {
        if let Some((index, slot)) = self.slot_mut(driver_id)
            && slot.node.is_none()
        {
            slot.sockets = slot.sockets.saturating_sub(1);
            self.place(index);
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
        self.pages.sweep_empty();
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
            && let Some(place) = slot.place
        {
            let shifted = self.pages.remove(place);
            self.shifted(shifted, place);
        }
        self.free_slots.push(index);
    }

    /// A location ping from the driver's socket. The position is already validated by its
    /// type; a heading is kept in [0, 360) or dropped if not finite. `None` if the driver
    /// is no longer online.
    pub fn ping(
        &mut self,
        driver: &DriverKey,
        position: LatLng,
        heading_deg: Option<f64>,
        now: Instant,
    ) -> Option<PingOutcome> {
        let (stale_after, max_speed_mps) = (self.stale_after, self.max_speed_mps);
        let index = self.find(driver)?;
        let (index, slot) = self.touch(index)?;
        let was_dispatchable = Self::is_dispatchable(slot, now, stale_after);
        if let Some(odometer) = &mut slot.odometer {
            odometer.count(position, now, max_speed_mps);
        }
        slot.position = Some(position);
        slot.unit = position.unit_vector();
        slot.heading_deg = normal_heading(heading_deg);
        slot.last_ping = now;
        let outcome = PingOutcome {
            trip_id: slot.trip_id.clone(),
            became_dispatchable: !was_dispatchable && Self::is_dispatchable(slot, now, stale_after),
        };
        self.place(index);
        Some(outcome)
    }

    /// Brings the driver's row in the pages in step with its slot, after any change. Only
    /// drivers that said `available`, have a position and no trip have a row; offers,
    /// sockets and staleness are filtered at query time because they come and go quickly.
    fn place(&mut self, index: u32) {
        let Some(slot) = self.slots[index as usize].as_mut() else {
            return;
        };
        let position = slot
            .position
            .filter(|_| slot.status == DriverStatus::Available && slot.trip_id.is_none());
        // The place the driver's row left (if it moved), and whose row took it.
        let (vacated, shifted) = match (position, slot.place) {
            (Some(position), old) => {
                let row = Driver {
                    unit: slot.unit,
                    slot: index,
                    ready: slot.sockets > 0,
                };
                let (place, shifted) = match old {
                    Some(old) => self.pages.update(old, position, row),
                    None => (self.pages.insert(position, row), None),
                };
                slot.place = Some(place);
                let answer = &mut self.answers[index as usize];
                answer.position = slot.position;
                answer.last_ping = slot.last_ping;
                (old, shifted)
            }
            (None, Some(old)) => {
                slot.place = None;
                (Some(old), self.pages.remove(old))
            }
            (None, None) => return,
        };
        if let Some(vacated) = vacated {
            self.shifted(shifted, vacated);
        }
    }

    /// A row was moved into `place` (the page swap-removes): its slot learns where.
    fn shifted(&mut self, shifted: Option<u32>, place: Place) {
        if let Some(slot) = shifted.and_then(|index| self.slots[index as usize].as_mut()) {
            slot.place = Some(place);
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
        self.place(index);
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
            slot.odometer = None;
        }
        slot.trip_id = trip_id;
        self.place(index);
    }

    /// Starts counting driven distance for the fare (the trip was `started`), from where
    /// the driver is now.
    pub fn start_odometer(&mut self, driver_id: &str, now: Instant) {
        if let Some((_, slot)) = self.slot_mut(driver_id) {
            slot.odometer = Some(Odometer {
                metres: 0.0,
                anchor: slot.position.map(|position| (position, now)),
                implausible: 0,
            });
        }
    }

    /// Metres driven since the trip started, if this node saw it start; and how many pings
    /// were left out as implausible.
    pub fn odometer_m(&self, driver_id: &str) -> Option<(f64, u32)> {
        self.slot(driver_id)
            .and_then(|slot| slot.odometer.as_ref())
            .map(|odometer| (odometer.metres, odometer.implausible))
    }

    pub fn position(&self, driver_id: &str) -> Option<LatLng> {
        self.slot(driver_id).and_then(|slot| slot.position)
    }
}

/// The distance a driver drove for a fare: each ping is measured from the last one that
/// was counted, and counted only if reaching it implied a possible speed — so a spoofed
/// position (a jump to the other side of the Earth) adds nothing, and neither does the
/// way back from it, while pings delivered in a bunch lose nothing.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Odometer {
    metres: f64,
    /// The last position counted, and when.
    anchor: Option<(LatLng, Instant)>,
    implausible: u32,
}

impl Odometer {
    fn count(&mut self, position: LatLng, now: Instant, max_speed_mps: f64) {
        let Some((from, at)) = self.anchor else {
            self.anchor = Some((position, now));
            return;
        };
        let metres = from.distance_m(&position);
        let seconds = now.saturating_duration_since(at).as_secs_f64();
        // Standing still (or a GPS wobble of a few metres) is always possible.
        if metres <= 10.0 || metres <= max_speed_mps * seconds {
            self.metres += metres;
            self.anchor = Some((position, now));
        } else {
            self.implausible += 1;
        }
    }
}

/// A heading in [0, 360), or none if it is not a finite number.
fn normal_heading(heading_deg: Option<f64>) -> Option<f64> {
    heading_deg
        .filter(|h| h.is_finite())
        .map(|h| h.rem_euclid(360.0))
}
