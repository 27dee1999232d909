//! Trips whose driver vanished (DESIGN §2 `driver_lost`). A driver may lose its phone,
//! its battery or its patience; a node may restart and the driver never come back. The
//! leader looks at every trip with a driver every few seconds ([`check_every`]): a driver with no
//! live socket anywhere and no ping for `HAIL_DRIVER_LOST_AFTER_MS` is lost. Before
//! pickup the trip goes back to dispatch (that driver excluded); after pickup it is
//! flagged for operators, once — nobody but a person can know where the passenger is.
//!
//! "No ping since" is the fleet's last contact when the driver is still known, else the
//! moment this leader first noticed it missing: a new leader (or a restarted single node)
//! gives every absent driver the full period to reconnect.

use std::{collections::HashSet, time::Duration};

use tokio::time::Instant;

use super::DispatchLoop;
use crate::{
    store::{Cause, Fence, StoreError},
    trip::{Actor, Change, Timestamp, TripState},
};

/// How often the leader looks for lost drivers: a quarter of the period, between 100 ms
/// and 5 s (one read of the trips that have a driver each time).
pub fn check_every(lost_after: Duration) -> Duration {
    (lost_after / 4).clamp(Duration::from_millis(100), Duration::from_secs(5))
}

impl DispatchLoop {
    /// Gives back or flags the trips whose driver is lost, if a check is due.
    pub(super) async fn check_lost_drivers(
        &mut self,
        fence: &Fence,
        now: Instant,
    ) -> Result<(), StoreError> {
        if self
            .lost_checked_at
            .is_some_and(|at| now.saturating_duration_since(at) < check_every(self.lost_after))
        {
            return Ok(());
        }
        self.lost_checked_at = Some(now);
        let held = [
            TripState::Accepted,
            TripState::Arrived,
            TripState::InProgress,
        ];
        let trips = self.store.trips_in_states(&held).await?;
        let mut missing = std::collections::HashMap::new();
        let mut lost = Vec::new();
        for trip in trips {
            let Some(driver_id) = &trip.driver_id else {
                continue;
            };
            let heard = match self.fleet.contact(driver_id) {
                Some((true, _)) => continue,
                Some((false, last_ping)) => last_ping,
                None => now,
            };
            let since = self
                .missing_drivers
                .get(&trip.id)
                .map_or(heard, |noticed| heard.min(*noticed));
            missing.insert(trip.id.clone(), since);
            let silent = now.saturating_duration_since(since);
            if silent >= self.lost_after {
                lost.push((trip, silent));
            }
        }
        self.missing_drivers = missing;
        if lost.is_empty() {
            return Ok(());
        }
        // A ride under way is flagged once: its latest event already says so.
        let flagged: HashSet<String> = self
            .store
            .lost_rides()
            .await?
            .into_iter()
            .map(|ride| ride.trip_id)
            .collect();
        for (trip, silent) in lost {
            if flagged.contains(&trip.id) {
                continue;
            }
            let mut cause = Cause::by(Actor::system(), Timestamp::at(now));
            cause.fence = Some(fence.clone());
            cause.reason = Some(format!(
                "driver offline for {} s (no socket, no ping){}",
                silent.as_secs(),
                if trip.state == TripState::InProgress {
                    ": the ride needs an operator"
                } else {
                    ": dispatching again"
                }
            ));
            match self
                .store
                .transition(&trip.id, &Change::DriverLost, &cause, |fresh| {
                    // Only if nothing moved since the look (the driver may have just
                    // completed it).
                    if fresh.seq == trip.seq {
                        Ok(())
                    } else {
                        Err(StoreError::Contention)
                    }
                })
                .await
            {
                Ok(transition) => {
                    tracing::warn!(trip_id = %trip.id, driver_id = ?trip.driver_id,
                        state = trip.state.as_str(), silent_s = silent.as_secs(), "driver lost");
                    self.announce.trip_changed(&transition);
                }
                Err(StoreError::Fenced) => return Err(StoreError::Fenced),
                Err(error) => {
                    tracing::debug!(trip_id = %trip.id, %error, "driver lost: trip moved on")
                }
            }
        }
        Ok(())
    }
}
