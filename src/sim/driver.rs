//! One simulated driver: keeps a socket open (reconnecting with backoff and jitter, to
//! another node when its node fails), cruises, pings, answers offers and drives its rides.

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use futures_util::{SinkExt, StreamExt};
use rand::{RngExt, rngs::StdRng};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use super::{
    city::{Answer, City, sleep_until_some},
    report::Counters,
};
use crate::{
    fleet::DriverStatus,
    geometry::LatLng,
    protocol::{
        DriverMessage, ServerMessage,
        rest::{Credentials, DriverSignup, Vehicle},
    },
    shutdown::Shutdown,
    trip::{Trip, TripState},
};

/// Seoul City Hall: the middle of the simulated city.
const CITY_CENTRE: (f64, f64) = (37.5663, 126.9779);
/// Drivers who cruise further than this from the centre turn back.
const CITY_RADIUS_M: f64 = 12_000.0;
const CRUISE_SPEED_MPS: f64 = 8.0;
const DRIVE_SPEED_MPS: f64 = 11.0;
/// How long a driver waits at the pickup before starting the ride, at time scale 1.
const BOARDING: Duration = Duration::from_secs(20);

#[derive(Debug, Clone)]
enum Phase {
    Cruising,
    ToPickup {
        trip_id: String,
        pickup: LatLng,
        dropoff: LatLng,
    },
    Boarding {
        trip_id: String,
        dropoff: LatLng,
        until: Instant,
    },
    ToDropoff {
        trip_id: String,
        dropoff: LatLng,
    },
}

impl Phase {
    fn trip_id(&self) -> Option<&str> {
        match self {
            Phase::Cruising => None,
            Phase::ToPickup { trip_id, .. }
            | Phase::Boarding { trip_id, .. }
            | Phase::ToDropoff { trip_id, .. } => Some(trip_id),
        }
    }
}

enum Reply {
    /// With the offer's pickup distance (m) and ETA (s), for the report.
    Accept((f64, f64)),
    Decline,
}

pub(super) fn plate(index: usize) -> String {
    const SYLLABLES: [&str; 8] = ["가", "나", "다", "라", "마", "바", "사", "아"];
    format!(
        "{:02}{}{:04}",
        10 + index % 90,
        SYLLABLES[index % 8],
        index % 10_000
    )
}

/// Onboards driver `index` through the operator API; its token, or `None` if refused.
pub async fn onboard(city: &City, index: usize, rng: &mut StdRng) -> Option<String> {
    let signup = DriverSignup {
        name: format!("Driver {index}"),
        vehicle: Vehicle {
            plate: plate(index),
        },
    };
    let mut server = city.pick_server(rng);
    for _ in 0..3 {
        let token = Some(city.config.operator_token.as_str());
        match city
            .post::<_, Credentials>(server, "/v1/drivers", token, None, &signup)
            .await
        {
            Answer::Done(credentials) => return Some(credentials.token),
            Answer::Refused(status) => {
                if index == 0 {
                    eprintln!("error: onboarding a driver answered {status}");
                }
                break;
            }
            Answer::Lost => server = city.other_server(server, rng),
            Answer::Later(wait) => tokio::time::sleep(wait).await,
        }
    }
    Counters::add(&city.counters.onboarding_failures);
    None
}

fn text(message: &DriverMessage) -> Message {
    Message::text(serde_json::to_string(message).expect("driver messages serialize"))
}

pub async fn drive(
    city: Arc<City>,
    token: String,
    index: usize,
    mut rng: StdRng,
    mut stop: Shutdown,
) {
    let counters = &city.counters;
    let centre = LatLng::new(CITY_CENTRE.0, CITY_CENTRE.1).expect("valid");
    let mut position = city
        .demand_point(&mut rng)
        .destination(rng.random_range(0.0..360.0), rng.random_range(0.0..3_000.0));
    let mut heading = rng.random_range(0.0..360.0);
    let mut phase = Phase::Cruising;
    let mut backoff = Duration::from_millis(100);
    let ping_every = Duration::from_millis(city.config.ping_interval_ms);
    let mut server = city.pick_server(&mut rng);
    'connection: loop {
        if stop.has_begun() {
            return;
        }
        let mut ws = match city
            .connect(server, &format!("/v1/driver/ws?token={token}"), index)
            .await
        {
            Ok(ws) => ws,
            Err(error) => {
                if Counters::get(&counters.connect_errors) == 0 && !city.config.quiet {
                    eprintln!("driver socket failed to connect (retrying with backoff): {error}");
                }
                Counters::add(&counters.connect_errors);
                server = city.other_server(server, &mut rng);
                let wait = backoff.mul_f64(rng.random_range(0.5..1.5));
                backoff = (backoff * 2).min(Duration::from_secs(5));
                tokio::select! {
                    _ = tokio::time::sleep(wait) => continue 'connection,
                    _ = stop.wait() => return,
                }
            }
        };
        backoff = Duration::from_millis(100);
        let open = counters.connected.fetch_add(1, Ordering::Relaxed) + 1;
        counters.connected_max.fetch_max(open, Ordering::Relaxed);
        // Status and position first on every (re)connect: the server rebuilds its fleet
        // from them.
        let hello = [
            DriverMessage::Status {
                status: DriverStatus::Available,
            },
            DriverMessage::location(position),
        ];
        let mut alive = true;
        for message in &hello {
            alive &= ws.send(text(message)).await.is_ok();
        }
        // Spread the first pings over one interval so drivers do not ping in lockstep.
        let first = Instant::now() + ping_every.mul_f64(rng.random_range(0.0..1.0));
        let mut ping = tokio::time::interval_at(first, ping_every);
        let mut last_move = Instant::now();
        let mut pending_answer: Option<(Instant, String, Reply)> = None;
        let mut liveness = city.liveness();
        while alive {
            let answer_due = pending_answer.as_ref().map(|(at, _, _)| *at);
            tokio::select! {
                _ = stop.wait() => {
                    let _ = ws.close(None).await;
                    counters.connected.fetch_sub(1, Ordering::Relaxed);
                    return;
                }
                _ = ping.tick() => {
                    let now = Instant::now();
                    let elapsed = now.duration_since(last_move).as_secs_f64() * city.config.time_scale;
                    last_move = now;
                    let arrived = advance(&mut position, &mut heading, &phase, elapsed, &centre, &mut rng);
                    phase = next_phase(&city, &mut server, &mut rng, &token, phase, arrived, now).await;
                    let free = matches!(phase, Phase::Cruising) && pending_answer.is_none();
                    city.set_idle(index, free.then_some(position));
                    let ping = DriverMessage::Location {
                        lat: position.lat(),
                        lng: position.lng(),
                        heading_deg: Some(heading.round()),
                        speed_mps: None,
                    };
                    alive = ws.send(text(&ping)).await.is_ok();
                    Counters::add(&counters.pings);
                }
                _ = sleep_until_some(answer_due) => {
                    if let Some((_, offer_id, reply)) = pending_answer.take() {
                        phase = answer(&city, &mut server, &mut rng, &token, &offer_id, reply).await.unwrap_or(phase);
                    }
                }
                _ = tokio::time::sleep_until(liveness.due()) => alive = liveness.tend(&mut ws).await,
                frame = ws.next() => {
                    let Some(Ok(frame)) = frame else { alive = false; continue };
                    liveness.heard();
                    let Message::Text(text) = frame else { continue };
                    let Ok(message) = serde_json::from_str::<ServerMessage>(&text) else { continue };
                    match message {
                        ServerMessage::Offer(offer) => {
                            city.set_idle(index, None);
                            Counters::add(&counters.offers);
                            counters.timing(&offer.trip_id, None, Some(Instant::now()));
                            if let Some(journal) = &city.config.journal {
                                journal.offers.lock().unwrap().push((Instant::now(), offer.offer_id.clone()));
                            }
                            {
                                let mut sum = counters.pickup_m_sum.lock().unwrap();
                                sum.0 += offer.pickup_distance_m;
                                sum.1 += 1;
                            }
                            let think = Duration::from_millis(rng.random_range(0..=city.config.think_time_ms));
                            let roll: f64 = rng.random_range(0.0..1.0);
                            if roll < city.config.accept_probability {
                                let pickup = (offer.pickup_distance_m, offer.pickup_eta_s);
                                pending_answer = Some((Instant::now() + think, offer.offer_id, Reply::Accept(pickup)));
                            } else if roll < city.config.accept_probability + city.config.decline_probability {
                                pending_answer = Some((Instant::now() + think, offer.offer_id, Reply::Decline));
                            } else {
                                Counters::add(&counters.ignored);
                            }
                        }
                        ServerMessage::OfferWithdrawn { offer_id, .. }
                            if pending_answer.as_ref().is_some_and(|(_, id, _)| *id == offer_id) =>
                        {
                            pending_answer = None;
                        }
                        ServerMessage::TripEvent(event) => {
                            let ours = phase.trip_id() == Some(event.trip_id.as_str());
                            let over = matches!(
                                event.trip.state,
                                TripState::Cancelled | TripState::Requested | TripState::Completed | TripState::Expired
                            );
                            if ours && over {
                                phase = Phase::Cruising;
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
        counters.connected.fetch_sub(1, Ordering::Relaxed);
        city.set_idle(index, None);
        Counters::add(&counters.socket_drops);
        // The node may be gone: reconnect elsewhere, after a jittered pause.
        server = city.other_server(server, &mut rng);
        let wait = backoff.mul_f64(rng.random_range(0.5..1.5));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.wait() => return,
        }
    }
}

/// Accepts or declines an offer; the new phase if the ride is on.
async fn answer(
    city: &City,
    server: &mut usize,
    rng: &mut StdRng,
    token: &str,
    offer_id: &str,
    reply: Reply,
) -> Option<Phase> {
    let counters = &city.counters;
    match reply {
        Reply::Accept((distance_m, eta_s)) => {
            let path = format!("/v1/offers/{offer_id}/accept");
            match city
                .post::<_, Trip>(*server, &path, Some(token), None, &())
                .await
            {
                Answer::Done(trip) => {
                    Counters::add(&counters.accepted);
                    counters.pickups.lock().unwrap().push((distance_m, eta_s));
                    city.acknowledged(&trip.id, trip.seq, "accepted");
                    Some(Phase::ToPickup {
                        trip_id: trip.id,
                        pickup: trip.pickup,
                        dropoff: trip.dropoff,
                    })
                }
                Answer::Refused(_) | Answer::Later(_) => None,
                Answer::Lost => {
                    *server = city.other_server(*server, rng);
                    None
                }
            }
        }
        Reply::Decline => {
            let path = format!("/v1/offers/{offer_id}/decline");
            match city
                .post::<_, ()>(*server, &path, Some(token), None, &())
                .await
            {
                Answer::Done(()) => Counters::add(&counters.declined),
                Answer::Lost => *server = city.other_server(*server, rng),
                Answer::Refused(_) | Answer::Later(_) => {}
            }
            None
        }
    }
}

/// Moves a driver by `seconds` of (scaled) driving. Returns whether it reached the
/// target of its phase.
fn advance(
    position: &mut LatLng,
    heading: &mut f64,
    phase: &Phase,
    seconds: f64,
    centre: &LatLng,
    rng: &mut StdRng,
) -> bool {
    let target = match phase {
        Phase::Cruising => None,
        Phase::ToPickup { pickup, .. } => Some(*pickup),
        Phase::ToDropoff { dropoff, .. } => Some(*dropoff),
        Phase::Boarding { .. } => return false,
    };
    match target {
        Some(target) => {
            let step = DRIVE_SPEED_MPS * seconds;
            let left = position.distance_m(&target);
            if left <= step.max(15.0) {
                *position = target;
                return true;
            }
            *heading = position.bearing_to(&target);
            *position = position.destination(*heading, step);
            false
        }
        None => {
            *heading = if position.distance_m(centre) > CITY_RADIUS_M {
                position.bearing_to(centre)
            } else {
                (*heading + rng.random_range(-35.0..35.0)).rem_euclid(360.0)
            };
            *position = position.destination(*heading, CRUISE_SPEED_MPS * seconds);
            false
        }
    }
}

/// The driver's side of a ride: arrive, board, start, drive, complete. A step the server
/// did not answer (restarting, unreachable) is tried again on the next ping, on another
/// server; one it refused ends the ride (it was cancelled meanwhile).
async fn next_phase(
    city: &City,
    server: &mut usize,
    rng: &mut StdRng,
    token: &str,
    phase: Phase,
    arrived: bool,
    now: Instant,
) -> Phase {
    let (step, trip_id) = match &phase {
        Phase::ToPickup { trip_id, .. } if arrived => ("arrive", trip_id.clone()),
        Phase::Boarding { trip_id, until, .. } if now >= *until => ("start", trip_id.clone()),
        Phase::ToDropoff { trip_id, .. } if arrived => ("complete", trip_id.clone()),
        _ => return phase,
    };
    match city.ride_step(*server, token, &trip_id, step).await {
        None => {
            *server = city.other_server(*server, rng);
            phase
        }
        Some(false) => Phase::Cruising,
        Some(true) => match phase {
            Phase::ToPickup { dropoff, .. } => Phase::Boarding {
                trip_id,
                dropoff,
                until: now + city.scale(BOARDING),
            },
            Phase::Boarding { dropoff, .. } => Phase::ToDropoff { trip_id, dropoff },
            _ => Phase::Cruising,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn drivers_reach_their_target_and_cruisers_stay_in_town() {
        let mut rng = StdRng::seed_from_u64(1);
        let centre = LatLng::new(CITY_CENTRE.0, CITY_CENTRE.1).unwrap();
        let start = centre.destination(90.0, 1_000.0);
        let mut position = start;
        let mut heading = 0.0;
        let phase = Phase::ToPickup {
            trip_id: "t".into(),
            pickup: centre,
            dropoff: centre,
        };
        let mut seconds = 0;
        while !advance(&mut position, &mut heading, &phase, 1.0, &centre, &mut rng) {
            seconds += 1;
            assert!(seconds < 200);
        }
        assert_eq!(position, centre);
        assert!((85..=95).contains(&seconds), "1 km at 11 m/s: {seconds}");
        let mut far = centre.destination(0.0, 20_000.0);
        for _ in 0..5_000 {
            advance(
                &mut far,
                &mut heading,
                &Phase::Cruising,
                4.0,
                &centre,
                &mut rng,
            );
        }
        assert!(far.distance_m(&centre) < CITY_RADIUS_M + 100.0);
    }
}
