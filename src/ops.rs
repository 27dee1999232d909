//! What operators see, apart from the socket that carries it (`gateway::ops_stream`):
//! the figures at a glance ([`Tally`], fed by every committed event and offer this node
//! hears of — in a cluster, every node's), the snapshot, and the cluster view.

use std::{collections::VecDeque, sync::Mutex};

use tokio::time::Instant;

use crate::{
    fleet::Fleet,
    protocol::{
        operators::{Figures, Minute, OfferLog, OfferOutcome, Snapshot},
        rest::{ClusterView, NodeView},
    },
    store::{SNAPSHOT_TERMINAL_TRIPS, Store, StoreError},
    trip::{EventKind, Timestamp, TripEvent, TripState},
};

/// Offers shown in the audit log on connect.
pub const RECENT_OFFERS: i64 = 200;
/// Minutes of history behind the figures and their trend.
const TREND_MINUTES: usize = 30;
/// Minutes the "at a glance" figures cover.
const GLANCE_MINUTES: i64 = 15;
/// A node not seen for this long is listed, but not counted as serving.
pub const NODE_SEEN_WITHIN_MS: i64 = 10_000;

/// Counts trips and offers per minute for the console's figures.
#[derive(Default)]
pub struct Tally {
    /// Each minute with the seconds from request to acceptance of the trips accepted in
    /// it. A std `Mutex`: held to bump a counter or read 30 entries.
    minutes: Mutex<VecDeque<(Minute, Vec<f64>)>>,
}

impl Tally {
    fn with_minute(&self, at: Timestamp, update: impl FnOnce(&mut Minute, &mut Vec<f64>)) {
        let mut minutes = self.minutes.lock().unwrap();
        let start = Timestamp(at.millis() - at.millis().rem_euclid(60_000));
        if minutes.back().is_none_or(|(m, _)| m.at < start) {
            minutes.push_back((
                Minute {
                    at: start,
                    ..Minute::default()
                },
                Vec::new(),
            ));
            while minutes.len() > TREND_MINUTES {
                minutes.pop_front();
            }
        }
        // An event stamped slightly earlier than the newest minute counts in its own minute
        // if that is still kept, else in the oldest.
        let position = minutes
            .iter()
            .rposition(|(m, _)| m.at <= start)
            .unwrap_or(0);
        let (minute, waits) = &mut minutes[position];
        update(minute, waits);
    }

    pub fn event(&self, event: &TripEvent) {
        self.with_minute(event.at, |minute, waits| match event.event {
            EventKind::Requested => minute.requested += 1,
            EventKind::Accepted => {
                minute.accepted += 1;
                let waited_ms = event.at.millis() - event.trip.requested_at.millis();
                waits.push(waited_ms.max(0) as f64 / 1_000.0);
            }
            EventKind::Completed => minute.completed += 1,
            EventKind::Cancelled => minute.cancelled += 1,
            EventKind::Expired => minute.expired += 1,
            EventKind::Arrived | EventKind::Started | EventKind::DriverCancelled => {}
        });
    }

    pub fn offer(&self, line: &OfferLog) {
        self.with_minute(line.at, |minute, _| match line.outcome {
            OfferOutcome::Made => minute.offers_made += 1,
            OfferOutcome::Accepted => minute.offers_accepted += 1,
            OfferOutcome::Declined => minute.offers_declined += 1,
            OfferOutcome::Expired => minute.offers_lapsed += 1,
            OfferOutcome::Withdrawn => {}
        });
    }

    pub fn figures(&self, now: Timestamp) -> Figures {
        let minutes = self.minutes.lock().unwrap();
        let since = now.millis() - GLANCE_MINUTES * 60_000;
        let glance: Vec<&(Minute, Vec<f64>)> = minutes
            .iter()
            .filter(|(m, _)| m.at.millis() >= since)
            .collect();
        let sum = |field: fn(&Minute) -> u32| glance.iter().map(|(m, _)| field(m)).sum::<u32>();
        let mut waits: Vec<f64> = glance
            .iter()
            .flat_map(|(_, waits)| waits.iter().copied())
            .collect();
        waits.sort_by(f64::total_cmp);
        let answered =
            sum(|m| m.offers_accepted) + sum(|m| m.offers_declined) + sum(|m| m.offers_lapsed);
        Figures {
            requested: sum(|m| m.requested),
            completed: sum(|m| m.completed),
            cancelled: sum(|m| m.cancelled),
            expired: sum(|m| m.expired),
            accept_p50_s: percentile(&waits, 0.50),
            accept_p95_s: percentile(&waits, 0.95),
            acceptance_rate: (answered > 0)
                .then(|| sum(|m| m.offers_accepted) as f64 / answered as f64),
            trend: minutes.iter().map(|(m, _)| m.clone()).collect(),
        }
    }
}

/// The value below which `quantile` of the sorted `values` lie (nearest rank).
pub fn percentile(sorted: &[f64], quantile: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (quantile * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Everything an operator sees at once: every online driver, every open trip and the
/// most recent finished ones, the figures and the latest offers.
pub async fn snapshot(store: &Store, fleet: &Fleet, tally: &Tally) -> Result<Snapshot, StoreError> {
    let open = [
        TripState::Requested,
        TripState::Accepted,
        TripState::Arrived,
        TripState::InProgress,
    ];
    let mut trips = store.trips_in_states(&open).await?;
    let trips_requested = trips
        .iter()
        .filter(|t| t.state == TripState::Requested)
        .count();
    let trips_active = trips.len() - trips_requested;
    trips.extend(store.recent_terminal_trips(SNAPSHOT_TERMINAL_TRIPS).await?);
    let offers = store.recent_offers(RECENT_OFFERS).await?;
    let now = Instant::now();
    let drivers = fleet.views(now);
    let mut stats = fleet.stats(now);
    stats.trips_requested = trips_requested;
    stats.trips_active = trips_active;
    Ok(Snapshot {
        drivers,
        trips,
        stats,
        figures: tally.figures(Timestamp::now()),
        offers,
    })
}

/// The cluster as the store knows it: the lease and every node that reported itself.
pub async fn cluster(store: &Store) -> Result<ClusterView, StoreError> {
    let lease = store.lease().await?;
    let now = Timestamp::now();
    let leader = lease.holder.filter(|_| lease.expires_at > now);
    let nodes = store
        .nodes()
        .await?
        .into_iter()
        .map(|node| NodeView {
            leader: leader.as_deref() == Some(node.id.as_str()),
            id: node.id,
            url: node.url,
            drivers_connected: node.drivers_connected,
            sockets: node.sockets,
            last_seen: node.last_seen,
        })
        .collect();
    Ok(ClusterView {
        epoch: lease.epoch,
        leader,
        nodes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        assert_eq!(percentile(&[], 0.5), None);
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&values, 0.5), Some(50.0));
        assert_eq!(percentile(&values, 0.95), Some(95.0));
        assert_eq!(percentile(&[7.0], 0.99), Some(7.0));
    }

    #[test]
    fn figures_count_the_last_fifteen_minutes_and_keep_thirty() {
        let tally = Tally::default();
        let offer = |outcome, minute: i64| OfferLog {
            offer_id: "o".into(),
            trip_id: "t".into(),
            driver_id: "d".into(),
            outcome,
            pickup_distance_m: None,
            pickup_eta_s: None,
            rank: None,
            candidates: None,
            radius_m: None,
            at: Timestamp(minute * 60_000),
        };
        for minute in 0..40 {
            tally.offer(&offer(OfferOutcome::Made, minute));
            let answer = if minute % 4 == 0 {
                OfferOutcome::Declined
            } else {
                OfferOutcome::Accepted
            };
            tally.offer(&offer(answer, minute));
        }
        let figures = tally.figures(Timestamp(40 * 60_000));
        assert_eq!(figures.trend.len(), 30);
        assert_eq!(figures.trend[0].at, Timestamp(10 * 60_000));
        // Minutes 25..=39: 15 minutes, of which 28, 32 and 36 declined.
        assert_eq!(figures.acceptance_rate, Some(12.0 / 15.0));
    }
}
