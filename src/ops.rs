//! What operators see, apart from the socket that carries it (`gateway::ops_stream`):
//! the figures at a glance ([`Tally`], fed by every committed event and offer this node
//! hears of — in a cluster, every node's), the snapshot, and the cluster view.

use std::{
    collections::{HashMap, VecDeque},
    sync::Mutex,
};

use tokio::time::Instant;

use crate::{
    config::DispatchConfig,
    dispatch::rank::{Eta, StraightLineEta},
    error::ApiError,
    fleet::Fleet,
    protocol::{
        operators::{
            CandidateView, Candidates, DriverCard, Figures, Minute, OfferLog, OfferOutcome,
            PassengerCard, Policy, SearchResults, Snapshot, TripFlag,
        },
        rest::{ClusterView, NodeView},
    },
    store::{AccountRecord, SEARCH_LIMIT, SNAPSHOT_TERMINAL_TRIPS, Store, StoreError},
    trip::{EventKind, Role, Timestamp, TripEvent, TripState},
};

/// Offers shown in the audit log on connect.
pub const RECENT_OFFERS: i64 = 200;
/// Minutes of history behind the figures and their trend.
const TREND_MINUTES: usize = 30;
/// Minutes the "at a glance" figures cover.
const GLANCE_MINUTES: i64 = 15;
/// A node not seen for this long is listed, but not counted as serving.
pub const NODE_SEEN_WITHIN_MS: i64 = 10_000;
/// Drivers listed for a manual assignment, at most, and how far they may be: a city's
/// breadth, farther than dispatch ever searches, for the trips nobody near can take.
const CANDIDATES: usize = 20;
const CANDIDATES_WITHIN_M: f64 = 50_000.0;

/// What operators' views read: the store, the fleet, the figures and the dispatch policy
/// (a node's `Rides` lends them, `Rides::sources`).
pub struct Sources<'a> {
    pub store: &'a Store,
    pub fleet: &'a Fleet,
    pub tally: &'a Tally,
    pub config: &'a DispatchConfig,
}

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
        self.count(event.event, event.at, event.trip.requested_at);
    }

    fn count(&self, event: EventKind, at: Timestamp, requested_at: Timestamp) {
        self.with_minute(at, |minute, waits| match event {
            EventKind::Requested => minute.requested += 1,
            EventKind::Accepted => {
                minute.accepted += 1;
                let waited_ms = at.millis() - requested_at.millis();
                waits.push(waited_ms.max(0) as f64 / 1_000.0);
            }
            EventKind::Completed => minute.completed += 1,
            EventKind::Cancelled => minute.cancelled += 1,
            EventKind::Expired => minute.expired += 1,
            EventKind::Arrived
            | EventKind::Started
            | EventKind::DriverCancelled
            | EventKind::DriverLost => {}
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

    /// Counts the last [`TREND_MINUTES`] from the store, so the figures do not start from
    /// zero when a node (re)starts. Call before anything else is counted.
    pub async fn restore(&self, store: &Store, now: Timestamp) -> Result<(), StoreError> {
        let this_minute = now.millis() - now.millis().rem_euclid(60_000);
        let since = Timestamp(this_minute - (TREND_MINUTES as i64 - 1) * 60_000);
        for past in store.events_since(since).await? {
            self.count(past.event, past.at, past.requested_at);
        }
        for line in store.offer_lines_since(since).await? {
            self.offer(&line);
        }
        Ok(())
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
/// most recent finished ones, the figures, the latest offers, the rides that need a
/// person, and the policy behind the countdowns.
pub async fn snapshot(sources: &Sources<'_>) -> Result<Snapshot, StoreError> {
    let (store, fleet, tally) = (sources.store, sources.fleet, sources.tally);
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
    let flags = store
        .lost_rides()
        .await?
        .into_iter()
        .map(|ride| TripFlag {
            trip_id: ride.trip_id,
            flag: EventKind::DriverLost.as_str().to_string(),
            at: ride.at,
            reason: ride.reason,
        })
        .collect();
    Ok(Snapshot {
        drivers,
        trips,
        stats,
        figures: tally.figures(Timestamp::now()),
        offers,
        flags,
        policy: policy(sources.config),
    })
}

fn policy(config: &DispatchConfig) -> Policy {
    Policy {
        offer_timeout_ms: config.offer_timeout_ms,
        dispatch_deadline_ms: config.dispatch_deadline_ms,
        search_radii_m: config.search_radius_m.clone(),
        stale_after_ms: config.stale_after_ms,
        driver_lost_after_ms: config.driver_lost_after_ms,
        detour_factor: config.detour_factor,
        urban_speed_mps: config.urban_speed_mps,
    }
}

/// A driver's account, where it is, and its active trip.
pub async fn driver_card(sources: &Sources<'_>, driver_id: &str) -> Result<DriverCard, ApiError> {
    match sources.store.account(driver_id).await? {
        Some(account) if account.role == Role::Driver => card_of(sources, account).await,
        _ => Err(ApiError::not_found("driver")),
    }
}

async fn card_of(sources: &Sources<'_>, account: AccountRecord) -> Result<DriverCard, ApiError> {
    let trip = sources.store.active_trip_of_driver(&account.id).await?;
    Ok(DriverCard {
        online: sources.fleet.view(&account.id, Instant::now()),
        id: account.id,
        name: account.name,
        plate: account.plate,
        trip,
    })
}

/// Trips, drivers and passengers matching `text`: ids exactly or by prefix, names and
/// plates as substrings. A matched account's latest trip comes with it.
pub async fn search(sources: &Sources<'_>, text: &str) -> Result<SearchResults, ApiError> {
    let mut trips = sources.store.find_trips(text).await?;
    let mut drivers = Vec::new();
    let mut passengers = Vec::new();
    for account in sources.store.find_accounts(text).await? {
        if let Some(trip) = sources.store.latest_trip_of(&account.id).await?
            && trips.len() < SEARCH_LIMIT as usize
            && !trips.iter().any(|known| known.id == trip.id)
        {
            trips.push(trip);
        }
        match account.role {
            Role::Driver if drivers.len() < SEARCH_LIMIT as usize => {
                drivers.push(card_of(sources, account).await?)
            }
            Role::Passenger if passengers.len() < SEARCH_LIMIT as usize => {
                passengers.push(PassengerCard {
                    id: account.id,
                    name: account.name,
                })
            }
            _ => {}
        }
    }
    Ok(SearchResults {
        trips,
        drivers,
        passengers,
    })
}

/// Drivers an operator could assign the trip to, nearest pickup ETA first, marked when
/// dispatch will not offer them this trip again.
pub async fn candidates(sources: &Sources<'_>, trip_id: &str) -> Result<Candidates, ApiError> {
    let trip = sources
        .store
        .trip(trip_id)
        .await?
        .ok_or_else(|| ApiError::not_found("trip"))?;
    let excluded: HashMap<String, String> = sources
        .store
        .exclusion_reasons(trip_id)
        .await?
        .into_iter()
        .collect();
    let eta = StraightLineEta {
        detour_factor: sources.config.detour_factor,
        speed_mps: sources.config.urban_speed_mps,
    };
    let now = Instant::now();
    let nearest =
        sources
            .fleet
            .nearest_available(trip.pickup, CANDIDATES_WITHIN_M, CANDIDATES, now, |_| false);
    let mut candidates = Vec::with_capacity(nearest.len());
    for candidate in nearest {
        let Some(view) = sources.fleet.view(&candidate.driver_id, now) else {
            continue;
        };
        let account = sources.store.account(&candidate.driver_id).await?;
        candidates.push(CandidateView {
            driver_id: candidate.driver_id.to_string(),
            name: account.as_ref().map(|a| a.name.clone()).unwrap_or_default(),
            plate: account.and_then(|a| a.plate),
            state: view.state,
            position: candidate.position,
            distance_m: candidate.distance_m.round(),
            eta_s: eta
                .pickup_eta_s(candidate.position, trip.pickup, candidate.distance_m)
                .round(),
            excluded: excluded.get(candidate.driver_id.as_str()).cloned(),
        });
    }
    candidates.sort_by(|a, b| a.eta_s.total_cmp(&b.eta_s));
    Ok(Candidates {
        trip_id: trip.id,
        candidates,
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
            batch: None,
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
