//! The operator's view: the snapshot, live figures, the offer audit log, and the
//! `/v1/ops/ws` stream that carries them to the console.
//!
//! The stream sends a snapshot, then deltas. Driver movement is not forwarded ping by
//! ping: every [`DRIVER_BATCH`] the socket task asks the fleet what changed since its last
//! batch, and it asks only after the previous send finished — so a slow browser gets
//! fewer, larger batches and the server never queues movement for it. Trip events and
//! offers come through a bounded broadcast; a subscriber that lags gets a fresh snapshot.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    extract::{
        State,
        ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade},
    },
    response::{IntoResponse, Response},
};
use serde::Serialize;
use tokio::{sync::broadcast, time::Instant};
use utoipa::ToSchema;

use crate::{
    error::ApiError,
    fleet::{DriverState, DriverView},
    http::Principal,
    server::AppState,
    store::{Role, SNAPSHOT_TERMINAL_TRIPS},
    trip::{EventKind, Timestamp, Trip, TripEvent, TripState},
};

/// How often the console receives moved drivers.
const DRIVER_BATCH: Duration = Duration::from_millis(500);
/// How often the console receives figures.
const FIGURES_EVERY: Duration = Duration::from_secs(2);
/// Trip events and offers an operator stream may fall behind by before it is resynced.
const LIVE_CAPACITY: usize = 1_024;
/// Offers kept for the audit log shown on connect.
const RECENT_OFFERS: usize = 200;
/// Minutes of history behind the figures and their trend.
const TREND_MINUTES: usize = 30;
/// Minutes the "at a glance" figures cover.
const GLANCE_MINUTES: i64 = 15;

/// One line of the dispatch audit log: who was offered which trip, why, and what came of
/// it. The ranking inputs are set on `made`.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct OfferLog {
    pub offer_id: String,
    pub trip_id: String,
    pub driver_id: String,
    /// `made`, `accepted`, `declined`, `expired` or `withdrawn`.
    pub outcome: &'static str,
    pub pickup_distance_m: Option<f64>,
    pub pickup_eta_s: Option<f64>,
    /// 1 = the best-ranked candidate.
    pub rank: Option<u32>,
    /// How many candidates were ranked.
    pub candidates: Option<u32>,
    /// The search radius the candidates came from.
    pub radius_m: Option<f64>,
    pub at: Timestamp,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Stats {
    pub drivers_online: usize,
    pub drivers_available: usize,
    pub drivers_offered: usize,
    pub drivers_busy: usize,
    pub drivers_stale: usize,
    pub drivers_offline: usize,
    /// Trips waiting for a driver.
    pub trips_requested: usize,
    /// Trips with a driver attached.
    pub trips_active: usize,
}

impl Stats {
    /// Counts drivers by state in one pass.
    fn new(
        states: impl Iterator<Item = DriverState>,
        trips_requested: usize,
        trips_active: usize,
    ) -> Stats {
        let mut stats = Stats {
            drivers_online: 0,
            drivers_available: 0,
            drivers_offered: 0,
            drivers_busy: 0,
            drivers_stale: 0,
            drivers_offline: 0,
            trips_requested,
            trips_active,
        };
        for state in states {
            stats.drivers_online += 1;
            *match state {
                DriverState::Available => &mut stats.drivers_available,
                DriverState::Offered => &mut stats.drivers_offered,
                DriverState::Busy => &mut stats.drivers_busy,
                DriverState::Stale => &mut stats.drivers_stale,
                DriverState::Offline => &mut stats.drivers_offline,
            } += 1;
        }
        stats
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Snapshot {
    pub drivers: Vec<DriverView>,
    /// Every non-terminal trip, then the most recent terminal ones.
    pub trips: Vec<Trip>,
    pub stats: Stats,
    pub figures: Figures,
    /// The most recent offer log lines, oldest first.
    pub offers: Vec<OfferLog>,
}

/// Trips and offers of one minute.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct Minute {
    /// Start of the minute.
    pub at: Timestamp,
    pub requested: u32,
    pub accepted: u32,
    pub completed: u32,
    pub cancelled: u32,
    pub expired: u32,
    pub offers_made: u32,
    pub offers_accepted: u32,
    pub offers_declined: u32,
    pub offers_lapsed: u32,
    #[serde(skip)]
    seconds_to_accept: Vec<f64>,
}

/// The console's figures at a glance, since this node started (at most 30 minutes).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Figures {
    /// Over the last 15 minutes.
    pub requested: u32,
    pub completed: u32,
    pub cancelled: u32,
    pub expired: u32,
    /// Seconds from request to acceptance, last 15 minutes.
    pub accept_p50_s: Option<f64>,
    pub accept_p95_s: Option<f64>,
    /// Accepted offers over answered or lapsed ones, last 15 minutes.
    pub acceptance_rate: Option<f64>,
    /// One entry per minute, oldest first, up to 30.
    pub trend: Vec<Minute>,
}

/// Feeds the operator streams. Held by the hub; every committed event passes through.
pub struct OpsFeed {
    live: broadcast::Sender<OpsLive>,
    minutes: Mutex<VecDeque<Minute>>,
    recent_offers: Mutex<VecDeque<OfferLog>>,
}

#[derive(Debug, Clone)]
pub enum OpsLive {
    Event(Arc<TripEvent>),
    Offer(Arc<OfferLog>),
}

impl Default for OpsFeed {
    fn default() -> Self {
        OpsFeed {
            live: broadcast::channel(LIVE_CAPACITY).0,
            minutes: Mutex::default(),
            recent_offers: Mutex::default(),
        }
    }
}

fn with_minute(minutes: &mut VecDeque<Minute>, at: Timestamp, update: impl FnOnce(&mut Minute)) {
    let start = Timestamp(at.millis() - at.millis().rem_euclid(60_000));
    if minutes.back().is_none_or(|m| m.at < start) {
        minutes.push_back(Minute {
            at: start,
            ..Minute::default()
        });
        while minutes.len() > TREND_MINUTES {
            minutes.pop_front();
        }
    }
    // An event stamped slightly earlier than the newest minute counts in its own minute
    // if that is still kept, else in the newest.
    let minute = match minutes.iter_mut().rev().find(|m| m.at <= start) {
        Some(minute) => minute,
        None => minutes.front_mut().expect("pushed above"),
    };
    update(minute);
}

impl OpsFeed {
    pub fn event(&self, event: &Arc<TripEvent>) {
        {
            let mut minutes = self.minutes.lock().unwrap();
            with_minute(&mut minutes, event.at, |minute| match event.event {
                EventKind::Requested => minute.requested += 1,
                EventKind::Accepted => {
                    minute.accepted += 1;
                    let waited_ms = event.at.millis() - event.trip.requested_at.millis();
                    minute
                        .seconds_to_accept
                        .push(waited_ms.max(0) as f64 / 1_000.0);
                }
                EventKind::Completed => minute.completed += 1,
                EventKind::Cancelled => minute.cancelled += 1,
                EventKind::Expired => minute.expired += 1,
                EventKind::Arrived | EventKind::Started | EventKind::DriverCancelled => {}
            });
        }
        let _ = self.live.send(OpsLive::Event(event.clone()));
    }

    pub fn offer(&self, entry: OfferLog) {
        {
            let mut minutes = self.minutes.lock().unwrap();
            with_minute(&mut minutes, entry.at, |minute| match entry.outcome {
                "made" => minute.offers_made += 1,
                "accepted" => minute.offers_accepted += 1,
                "declined" => minute.offers_declined += 1,
                "expired" => minute.offers_lapsed += 1,
                _ => {}
            });
        }
        let mut recent = self.recent_offers.lock().unwrap();
        recent.push_back(entry.clone());
        if recent.len() > RECENT_OFFERS {
            recent.pop_front();
        }
        drop(recent);
        let _ = self.live.send(OpsLive::Offer(Arc::new(entry)));
    }

    pub fn subscribe(&self) -> broadcast::Receiver<OpsLive> {
        self.live.subscribe()
    }

    pub fn recent_offers(&self) -> Vec<OfferLog> {
        self.recent_offers.lock().unwrap().iter().cloned().collect()
    }

    pub fn figures(&self, now: Timestamp) -> Figures {
        let minutes = self.minutes.lock().unwrap();
        let since = now.millis() - GLANCE_MINUTES * 60_000;
        let glance: Vec<&Minute> = minutes.iter().filter(|m| m.at.millis() >= since).collect();
        let sum = |field: fn(&Minute) -> u32| glance.iter().map(|m| field(m)).sum::<u32>();
        let mut waits: Vec<f64> = glance
            .iter()
            .flat_map(|m| m.seconds_to_accept.iter().copied())
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
            trend: minutes.iter().cloned().collect(),
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

/// Everything an operator sees at once.
pub async fn snapshot(state: &AppState) -> Result<Snapshot, ApiError> {
    let open = [
        TripState::Requested,
        TripState::Accepted,
        TripState::Arrived,
        TripState::InProgress,
    ];
    let mut trips = state.store.trips_in_states(&open).await?;
    let trips_requested = trips
        .iter()
        .filter(|t| t.state == TripState::Requested)
        .count();
    let trips_active = trips.len() - trips_requested;
    trips.extend(
        state
            .store
            .recent_terminal_trips(SNAPSHOT_TERMINAL_TRIPS)
            .await?,
    );
    let drivers = state.fleet.lock().unwrap().views(Instant::now());
    let stats = Stats::new(
        drivers.iter().map(|d| d.state),
        trips_requested,
        trips_active,
    );
    let ops = &state.hub.ops;
    Ok(Snapshot {
        drivers,
        trips,
        stats,
        figures: ops.figures(Timestamp::now()),
        offers: ops.recent_offers(),
    })
}

/// Operator stream messages, tagged by `type`.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum OpsMessage<'a> {
    Snapshot(&'a Snapshot),
    /// Moved or changed drivers as `[id, state, lat, lng, trip_id]`, and drivers gone.
    Drivers {
        drivers: Vec<CompactDriver>,
        removed: Vec<String>,
    },
    TripEvent(&'a TripEvent),
    Offer(&'a OfferLog),
    Figures {
        stats: Stats,
        figures: Figures,
    },
}

type CompactDriver = (
    String,
    DriverState,
    Option<f64>,
    Option<f64>,
    Option<String>,
);

fn compact(view: DriverView) -> CompactDriver {
    // Five decimals of a degree is about a metre: plenty for a map, and half the bytes.
    let round = |x: f64| (x * 1e5).round() / 1e5;
    (
        view.id,
        view.state,
        view.position.map(|p| round(p.lat())),
        view.position.map(|p| round(p.lng())),
        view.trip_id,
    )
}

#[utoipa::path(get, path = "/v1/ops/ws", tag = "sockets", security(("bearer" = [])),
    params(("token" = Option<String>, Query, description = "Operator token (browsers cannot set headers)")),
    responses((status = 101, description = "Operator stream: snapshot, then drivers, trip_event, offer and figures messages"),
              (status = 401, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody)))]
pub async fn ops_socket(
    State(state): State<AppState>,
    principal: Principal,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    principal.require(Role::Operator)?;
    let permit = crate::ws::socket_permit(&state)?;
    Ok(crate::ws::configure(upgrade)
        .on_upgrade(move |socket| async move {
            let _permit = permit;
            state.metrics.sockets_open.inc();
            run_ops_stream(&state, socket).await;
            state.metrics.sockets_open.dec();
        })
        .into_response())
}

async fn send(socket: &mut WebSocket, message: &OpsMessage<'_>) -> Result<(), ()> {
    let text = serde_json::to_string(message).map_err(|_| ())?;
    socket
        .send(Message::Text(Utf8Bytes::from(text)))
        .await
        .map_err(|_| ())
}

/// Sends a fresh snapshot and returns the fleet version it reflects.
async fn resync(state: &AppState, socket: &mut WebSocket) -> Result<u64, ()> {
    let version = state.fleet.lock().unwrap().version();
    match snapshot(state).await {
        Ok(snapshot) => send(socket, &OpsMessage::Snapshot(&snapshot))
            .await
            .map(|_| version),
        Err(error) => {
            let text =
                serde_json::json!({"type": "error", "code": error.code, "message": error.message})
                    .to_string();
            let _ = socket.send(Message::Text(Utf8Bytes::from(text))).await;
            Err(())
        }
    }
}

async fn run_ops_stream(state: &AppState, mut socket: WebSocket) {
    // Subscribe first: an event between the snapshot and the subscription would be lost;
    // one in both is harmless (the console keys trips by id and seq).
    let mut live = state.hub.ops.subscribe();
    let Ok(mut version) = resync(state, &mut socket).await else {
        return;
    };
    let mut shutdown = state.shutdown.clone();
    let mut drivers_tick = tokio::time::interval(DRIVER_BATCH);
    let mut figures_tick = tokio::time::interval(FIGURES_EVERY);
    // Missed ticks (a slow browser) are skipped, not bunched up.
    drivers_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    figures_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        let sent = tokio::select! {
            _ = drivers_tick.tick() => {
                let changes = state.fleet.lock().unwrap().changed_since(version, Instant::now());
                match changes {
                    Some(changes) if changes.drivers.is_empty() && changes.removed.is_empty() => Ok(()),
                    Some(changes) => {
                        version = changes.version;
                        let drivers = changes.drivers.into_iter().map(compact).collect();
                        send(&mut socket, &OpsMessage::Drivers { drivers, removed: changes.removed }).await
                    }
                    None => resync(state, &mut socket).await.map(|v| version = v),
                }
            }
            _ = figures_tick.tick() => {
                // Counted in place: no copy of the whole fleet every two seconds.
                let stats = {
                    let fleet = state.fleet.lock().unwrap();
                    let mut stats = Stats::new(fleet.states(Instant::now()), state.dispatcher.pending_trips(), 0);
                    stats.trips_active = stats.drivers_busy;
                    stats
                };
                send(&mut socket, &OpsMessage::Figures { stats, figures: state.hub.ops.figures(Timestamp::now()) }).await
            }
            message = live.recv() => match message {
                Ok(OpsLive::Event(event)) => send(&mut socket, &OpsMessage::TripEvent(&event)).await,
                Ok(OpsLive::Offer(offer)) => send(&mut socket, &OpsMessage::Offer(&offer)).await,
                Err(broadcast::error::RecvError::Lagged(_)) => resync(state, &mut socket).await.map(|v| version = v),
                Err(broadcast::error::RecvError::Closed) => Err(()),
            },
            frame = socket.recv() => match frame {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => Err(()),
                Some(Ok(_)) => Ok(()),
            },
            _ = crate::server::stopping(&mut shutdown) => {
                let _ = socket.send(Message::Close(None)).await;
                Err(())
            }
        };
        if sent.is_err() {
            return;
        }
    }
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
        let feed = OpsFeed::default();
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
            feed.offer(offer("made", minute));
            feed.offer(offer(
                if minute % 4 == 0 {
                    "declined"
                } else {
                    "accepted"
                },
                minute,
            ));
        }
        let figures = feed.figures(Timestamp(40 * 60_000));
        assert_eq!(figures.trend.len(), 30);
        assert_eq!(figures.trend[0].at, Timestamp(10 * 60_000));
        // Minutes 25..=39: 15 minutes, of which 28, 32 and 36 declined.
        assert_eq!(figures.acceptance_rate, Some(12.0 / 15.0));
        assert_eq!(feed.recent_offers().len(), 80);
    }
}
