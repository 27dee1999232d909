//! The fleet: every online driver, where it is and whether it can take a ride — a pure
//! index ([`index::FleetIndex`]) behind the one handle the rest of hail uses, [`Fleet`].
//!
//! The index's mutex is private to this module, as mini-redis keeps its `Mutex<State>`
//! inside `Db`: nobody else can lock it, every method holds it for a few map and tree
//! operations and never awaits or calls out while holding it. So no code path can hold
//! it together with another module's lock in the wrong order (the deadlock of issue 9
//! cannot be written any more).

pub mod index;

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::time::Instant;

use crate::{geometry::LatLng, protocol::operators::Stats, trip::Timestamp};
pub use index::{
    Availability, Candidate, DriverId, DriverKey, DriverRecord, DriverState, DriverStatus,
    DriverView, FleetChanges, FleetIndex, PingOutcome,
};

/// Shared handle to the fleet index. Cheap to share behind an `Arc`.
pub struct Fleet {
    /// std `Mutex`: every critical section is a few map/tree operations and never awaits;
    /// the ping path holds it for well under a microsecond.
    state: Mutex<State>,
}

struct State {
    index: FleetIndex,
    /// Drivers held here that changed since the last [`Fleet::take_records`], for the
    /// other nodes; `None` when there are none (one node with its in-process bus), so a
    /// single node does no bookkeeping for a bus nobody reads.
    changed: Option<HashSet<String>>,
    /// Drivers held here that went offline for good since the last records.
    gone: Vec<String>,
}

/// What another node's records changed here.
#[derive(Debug, Default)]
pub struct Applied {
    /// Some driver became dispatchable.
    pub gained: bool,
    /// Drivers no longer dispatchable (went offline, lost their socket).
    pub lost: Vec<String>,
    /// Drivers that moved to the other node while this node still had a socket for them.
    pub superseded: Vec<String>,
    /// Trips whose driver's position changed, for the passengers watching them.
    pub moved_on_trip: Vec<(String, LatLng)>,
}

impl Fleet {
    /// `clustered`: other nodes listen, so remember what to tell them.
    pub fn new(stale_after: Duration, max_speed_mps: f64, clustered: bool) -> Fleet {
        Fleet {
            state: Mutex::new(State {
                index: FleetIndex::new(stale_after).with_max_speed_mps(max_speed_mps),
                changed: clustered.then(HashSet::new),
                gone: Vec::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock would leave a half-updated index; the process
        // is better off dying than serving from it.
        self.state.lock().expect("the fleet lock is never poisoned")
    }

    fn changed(state: &mut State, driver_id: &str) {
        if let Some(changed) = &mut state.changed
            && !changed.contains(driver_id)
        {
            changed.insert(driver_id.to_string());
        }
    }

    /// A socket of this driver opened on this node. Returns the key its pings use.
    pub fn connect(&self, driver_id: &str, trip_id: Option<String>, now: Instant) -> DriverKey {
        let mut state = self.lock();
        let key = state
            .index
            .connect(driver_id, trip_id, now, Timestamp::now());
        Self::changed(&mut state, driver_id);
        key
    }

    /// A socket of this driver on this node closed.
    pub fn disconnect(&self, driver_id: &str) {
        let mut state = self.lock();
        state.index.disconnect(driver_id);
        Self::changed(&mut state, driver_id);
    }

    pub fn ping(
        &self,
        driver: &DriverKey,
        position: LatLng,
        heading_deg: Option<f64>,
        now: Instant,
    ) -> Option<PingOutcome> {
        let mut state = self.lock();
        let outcome = state.index.ping(driver, position, heading_deg, now);
        if outcome.is_some() {
            Self::changed(&mut state, driver.id());
        }
        outcome
    }

    pub fn set_status(&self, driver_id: &str, status: DriverStatus, now: Instant) -> Availability {
        let mut state = self.lock();
        let availability = state.index.set_status(driver_id, status, now);
        Self::changed(&mut state, driver_id);
        availability
    }

    /// Records an offer made to (`open`) or closed for a driver, for operators' views.
    pub fn set_offer(&self, driver_id: &str, offer_id: &str, open: bool) {
        self.lock().index.set_offer(driver_id, offer_id, open);
    }

    pub fn set_trip(&self, driver_id: &str, trip_id: Option<String>) {
        self.lock().index.set_trip(driver_id, trip_id);
    }

    pub fn start_odometer(&self, driver_id: &str, now: Instant) {
        self.lock().index.start_odometer(driver_id, now);
    }

    pub fn odometer_m(&self, driver_id: &str) -> Option<(f64, u32)> {
        self.lock().index.odometer_m(driver_id)
    }

    pub fn position(&self, driver_id: &str) -> Option<LatLng> {
        self.lock().index.position(driver_id)
    }

    pub fn dispatchable(&self, driver_id: &str, now: Instant) -> bool {
        self.lock().index.dispatchable(driver_id, now)
    }

    pub fn nearest_available(
        &self,
        pickup: LatLng,
        radius_m: f64,
        k: usize,
        now: Instant,
        exclude: impl Fn(&str) -> bool,
    ) -> Vec<Candidate> {
        self.lock()
            .index
            .nearest_available(pickup, radius_m, k, now, exclude)
    }

    /// Whether the driver has a live socket, and when it was last heard from.
    pub fn contact(&self, driver_id: &str) -> Option<(bool, Instant)> {
        self.lock().index.contact(driver_id)
    }

    pub fn view(&self, driver_id: &str, now: Instant) -> Option<DriverView> {
        self.lock().index.view(driver_id, now)
    }

    pub fn views(&self, now: Instant) -> Vec<DriverView> {
        self.lock().index.views(now)
    }

    /// Drivers counted by state, in place (no copy of the fleet). `trips_*` are left 0.
    pub fn stats(&self, now: Instant) -> Stats {
        let state = self.lock();
        let mut stats = Stats::default();
        for driver_state in state.index.states(now) {
            stats.count(driver_state);
        }
        stats
    }

    pub fn len(&self) -> usize {
        self.lock().index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drivers whose socket is on this node, and how many of them are connected.
    pub fn held_here(&self) -> (usize, usize) {
        self.lock().index.held_here()
    }

    pub fn version(&self) -> u64 {
        self.lock().index.version()
    }

    pub fn changed_since(&self, version: u64, now: Instant) -> Option<FleetChanges> {
        self.lock().index.changed_since(version, now)
    }

    /// Removes drivers silent past the grace period without a socket. Returns them.
    pub fn sweep_offline(&self, now: Instant, offline_after: Duration) -> Vec<String> {
        let mut state = self.lock();
        let gone = state.index.sweep_offline(now, offline_after);
        if state.changed.is_some() {
            state.gone.extend(gone.iter().cloned());
        }
        gone
    }

    /// What changed among the drivers held here since the last call, for the other nodes.
    pub fn take_records(&self, now: Instant) -> Vec<DriverRecord> {
        let mut state = self.lock();
        let Some(changed) = state.changed.as_mut().map(std::mem::take) else {
            return Vec::new();
        };
        let mut records: Vec<DriverRecord> = changed
            .iter()
            .filter_map(|driver_id| state.index.record(driver_id, now))
            .collect();
        for driver_id in std::mem::take(&mut state.gone) {
            records.push(DriverRecord {
                driver_id,
                connected: false,
                connected_since: Timestamp::default(),
                status: DriverStatus::Offline,
                position: None,
                heading_deg: None,
                silent_ms: 0,
                gone: true,
            });
        }
        records
    }

    /// Applies another node's records of the drivers it holds.
    pub fn apply_records(
        &self,
        node: &Arc<str>,
        records: &[DriverRecord],
        now: Instant,
    ) -> Applied {
        let mut applied = Applied::default();
        let mut state = self.lock();
        for record in records {
            let (availability, superseded) = state.index.apply_record(node, record, now);
            applied.gained |= availability.gained;
            if availability.lost {
                applied.lost.push(record.driver_id.clone());
            }
            if superseded {
                applied.superseded.push(record.driver_id.clone());
            }
            if let (Some(position), Some(trip_id)) = (
                record.position,
                state
                    .index
                    .view(&record.driver_id, now)
                    .and_then(|view| view.trip_id),
            ) {
                applied.moved_on_trip.push((trip_id, position));
            }
        }
        applied
    }

    /// `node` went silent: its drivers have no live socket. Returns them.
    pub fn node_lost(&self, node: &str) -> Vec<String> {
        self.lock().index.node_lost(node)
    }
}
