//! The drivers other nodes hold: what this node tells them of its own ([`DriverRecord`]),
//! and what it makes of theirs.

use std::{sync::Arc, time::Duration};

use tokio::time::Instant;

use super::{Availability, DriverRecord, FleetIndex};

impl FleetIndex {
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
        let (stale_after, max_speed_mps) = (self.stale_after, self.max_speed_mps);
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
            if let Some(odometer) = &mut slot.odometer {
                odometer.count(position, slot.last_ping, max_speed_mps);
            }
            slot.position = Some(position);
            slot.unit = position.unit_vector();
        }
        let is = Self::is_dispatchable(slot, now, stale_after);
        self.place(index);
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
            if let Some((index, slot)) = self.slot_mut(id) {
                slot.sockets = 0;
                self.place(index);
            }
        }
        held.iter().map(|id| id.to_string()).collect()
    }
}
