//! Reading the fleet: the nearest dispatchable drivers, and what operators see.

use smallvec::SmallVec;
use tokio::time::Instant;

use super::{
    Answer, Candidate, DriverState, DriverStatus, DriverView, FleetChanges, FleetIndex,
    REMOVED_LOG, Slot,
    pages::{self, CELL_SIDE_M},
};
use crate::{
    geometry::{self, LatLng},
    trip::Timestamp,
};

/// How far the first look reaches where no driver is near the pickup, in metres.
const FIRST_REACH_M: f64 = 500.0;

/// The first reach is this many times the radius that holds k drivers at the local
/// density: a little more, for the luck of the draw. Measured at 250,000 drivers
/// (`benches/fleet.rs`, 220 m cells): with 1.2 a query took 1.05 looks on average, with
/// 1.5 one, but read 23 % more rows.
const SPARE: f64 = 1.2;

/// Each widening multiplies the reach by this, up to the radius asked for: a first
/// look that fell short usually fell only a little short.
const WIDEN: f64 = 1.5;

impl FleetIndex {
    /// The up to `k` nearest dispatchable drivers within `radius_m` of `pickup`, nearest
    /// first, skipping those `exclude` names.
    ///
    /// Reads the pages around the pickup that can hold a driver within `reach`; once k
    /// drivers within `reach` are found they are the k nearest, and until then the reach
    /// widens (× 1.5, up to `radius_m`). The first reach is guessed from how many drivers
    /// the cells around the pickup hold, so that it usually holds k. A driver's
    /// `Answer` (one cache line) is read only for the drivers that make the answer (to
    /// check that it pinged lately, to ask `exclude`, and to answer); the pages' rows and
    /// the answers' lines are asked for ahead of their reads, so that their cache misses
    /// overlap.
    pub fn nearest_available(
        &self,
        pickup: LatLng,
        radius_m: f64,
        k: usize,
        now: Instant,
        exclude: impl Fn(&str) -> bool,
    ) -> Vec<Candidate> {
        if k == 0 || radius_m.is_nan() || radius_m < 0.0 {
            return Vec::new();
        }
        // Half the Earth's circumference reaches everywhere.
        let radius_m = radius_m.min(std::f64::consts::PI * geometry::EARTH_RADIUS_M);
        let query = pickup.unit_vector();
        let density = self.pages.density_at(pickup);
        let mut reach = if density > 0.0 {
            // k drivers at this density (per cell) fill a circle of this radius.
            SPARE * CELL_SIDE_M * (k as f64 / (std::f64::consts::PI * density)).sqrt()
        } else {
            FIRST_REACH_M
        }
        .clamp(50.0, radius_m.max(50.0))
        .min(radius_m);
        // A driver is fresh if it pinged at or after this.
        let fresh_since = now.checked_sub(self.stale_after);
        let by_distance = |a: &(f64, u32), b: &(f64, u32)| a.0.total_cmp(&b.0);
        // Drivers within reach: (squared chord, slot).
        let mut within: SmallVec<[(f64, u32); 128]> = SmallVec::new();
        // The answer's drivers: (squared chord, what to answer with, position).
        let mut found: SmallVec<[(f64, &Answer, LatLng); 16]> = SmallVec::new();
        loop {
            within.clear();
            found.clear();
            let reach_chord = geometry::chord_for_distance_m(reach);
            let reach_squared = reach_chord * reach_chord;
            self.pages.near(pickup, &query, reach, |squared, row| {
                if squared <= reach_squared && row.ready() {
                    within.push((squared, row.slot()));
                }
            });
            // Only the nearest are put in order: as many as the answer still lacks, then
            // more if `exclude` turned some away.
            let (mut next, mut sorted) = (0, 0);
            while found.len() < k && next < within.len() {
                if next == sorted {
                    let want = k - found.len();
                    let rest = &mut within[sorted..];
                    if rest.len() > want {
                        rest.select_nth_unstable_by(want - 1, by_distance);
                    }
                    sorted = (sorted + want).min(within.len());
                    within[next..sorted].sort_unstable_by(by_distance);
                    for &(_, index) in &within[next..sorted] {
                        pages::prefetch(&self.answers[index as usize]);
                    }
                }
                let (squared, index) = within[next];
                next += 1;
                // Every row has its answer (rows are written with them).
                let answer = &self.answers[index as usize];
                let fresh = fresh_since.is_none_or(|since| answer.last_ping >= since);
                let Some(position) = answer.position.filter(|_| fresh && !exclude(&answer.id))
                else {
                    continue;
                };
                found.push((squared, answer, position));
            }
            if found.len() == k || reach >= radius_m {
                return found
                    .iter()
                    .map(|&(squared, answer, position)| Candidate {
                        driver_id: answer.id.clone(),
                        position,
                        distance_m: geometry::distance_m_for_chord(squared.sqrt()),
                    })
                    .collect();
            }
            reach = (reach * WIDEN).min(radius_m);
        }
    }

    pub fn view(&self, driver_id: &str, now: Instant) -> Option<DriverView> {
        self.slot(driver_id).map(|slot| self.view_of(slot, now))
    }

    /// Whether the driver has a live socket (on any node), and when it was last heard
    /// from; `None` if it is not online at all.
    pub fn contact(&self, driver_id: &str) -> Option<(bool, Instant)> {
        self.slot(driver_id)
            .map(|slot| (slot.sockets > 0, slot.last_ping))
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
            last_ping_at: Timestamp::at(slot.last_ping),
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
