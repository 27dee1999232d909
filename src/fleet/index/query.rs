//! Reading the fleet: the nearest dispatchable drivers, and what operators see.

use std::collections::BinaryHeap;

use tokio::time::Instant;

use super::{
    Candidate, DriverState, DriverStatus, DriverView, FleetChanges, FleetIndex, REMOVED_LOG, Slot,
};
use crate::{
    geometry::{self, LatLng},
    trip::Timestamp,
};

impl FleetIndex {
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
