//! One simulated passenger: takes a free passenger account (or signs one up), requests a
//! ride around a hotspot, follows it on the trip stream (resuming after drops, on another
//! node if its node fails), maybe cancels while waiting, counts how it ended, and frees
//! the account for a later ride. Answers of 429 are honoured: it waits `Retry-After`.

use std::{sync::Arc, time::Duration};

use futures_util::StreamExt;
use rand::{RngExt, rngs::StdRng};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use super::{
    city::{Answer, City, sleep_until_some},
    report::Counters,
};
use crate::{
    ids::new_id,
    protocol::{
        ServerMessage,
        rest::{CancelRequest, Credentials, PassengerSignup, TripRequest},
    },
    shutdown::Shutdown,
    trip::{EventKind, Trip, TripState},
};

/// How often a passenger tries a write before giving up.
const ATTEMPTS: usize = 8;

pub async fn ride(city: Arc<City>, mut rng: StdRng, stop: Shutdown) {
    let mut server = city.pick_server(&mut rng);
    let token = match city.free_passenger() {
        Some(token) => token,
        None => {
            let signup = PassengerSignup {
                name: "Passenger".into(),
            };
            let mut token = None;
            for _ in 0..ATTEMPTS {
                match city
                    .post::<_, Credentials>(server, "/v1/passengers", None, None, &signup)
                    .await
                {
                    Answer::Done(credentials) => {
                        token = Some(credentials.token);
                        break;
                    }
                    Answer::Later(wait) => tokio::time::sleep(wait).await,
                    Answer::Lost => server = city.other_server(server, &mut rng),
                    Answer::Refused(_) => break,
                }
            }
            let Some(token) = token else { return };
            token
        }
    };
    // The account is free again once its ride is over (not if the run stopped mid-ride).
    if ride_as(&city, &token, server, rng, stop).await {
        city.passenger_free(token);
    }
}

/// One ride of the passenger holding `token`. Returns whether the ride is over.
async fn ride_as(
    city: &City,
    token: &str,
    mut server: usize,
    mut rng: StdRng,
    mut stop: Shutdown,
) -> bool {
    let counters = &city.counters;
    let pickup = city.demand_point(&mut rng);
    let dropoff = pickup.destination(
        rng.random_range(0.0..360.0),
        rng.random_range(1_000.0..6_000.0),
    );
    let key = new_id("sim");
    let body = TripRequest { pickup, dropoff };
    let free_driver = city.free_driver_near(pickup);
    let sent = Instant::now();
    // A lost answer is retried with the same Idempotency-Key, on another node if there is
    // one: never two rides.
    let mut trip_id = None;
    let mut backoff = Duration::from_millis(100);
    for _ in 0..ATTEMPTS {
        let wait = match city
            .post::<_, Trip>(server, "/v1/trips", Some(token), Some(&key), &body)
            .await
        {
            Answer::Done(trip) => {
                trip_id = Some(trip.id);
                break;
            }
            Answer::Refused(_) => break,
            Answer::Later(wait) => wait,
            Answer::Lost => {
                server = city.other_server(server, &mut rng);
                backoff.mul_f64(rng.random_range(0.5..1.5))
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.wait() => return false,
        }
        backoff = (backoff * 2).min(Duration::from_secs(3));
    }
    let Some(trip_id) = trip_id else { return true };
    Counters::add(&counters.requested);
    city.acknowledged(&trip_id, 1, "requested");
    counters.timing(&trip_id, Some((sent, free_driver)), None);
    let cancel_at = (rng.random_range(0.0..1.0) < city.config.cancel_probability)
        .then(|| Instant::now() + city.scale(Duration::from_secs_f64(rng.random_range(3.0..40.0))));
    let mut last_seq = 0;
    let mut state = Some(TripState::Requested);
    let mut backoff = Duration::from_millis(100);
    loop {
        let path = format!("/v1/trips/{trip_id}/ws?after={last_seq}&token={token}");
        let Ok(mut ws) = city.connect(server, &path, 0).await else {
            Counters::add(&counters.connect_errors);
            server = city.other_server(server, &mut rng);
            tokio::select! {
                _ = tokio::time::sleep(backoff.mul_f64(rng.random_range(0.5..1.5))) => {}
                _ = stop.wait() => return false,
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
            continue;
        };
        backoff = Duration::from_millis(100);
        let mut liveness = city.liveness();
        loop {
            let cancel_due = cancel_at.filter(|_| {
                matches!(
                    state,
                    Some(TripState::Requested | TripState::Accepted | TripState::Arrived)
                )
            });
            tokio::select! {
                _ = stop.wait() => {
                    let _ = ws.close(None).await;
                    return false;
                }
                _ = sleep_until_some(cancel_due) => {
                    let reason = CancelRequest { reason: Some("changed plans".into()) };
                    let path = format!("/v1/trips/{trip_id}/cancel");
                    // Counted when its event arrives; acknowledged here.
                    if let Answer::Done(trip) = city.post::<_, Trip>(server, &path, Some(token), None, &reason).await {
                        city.acknowledged(&trip_id, trip.seq, "cancelled");
                    }
                    // Sent once: whatever came of it arrives on the stream.
                    state = None;
                }
                _ = tokio::time::sleep_until(liveness.due()) => {
                    if !liveness.tend(&mut ws).await {
                        break;
                    }
                }
                frame = ws.next() => {
                    let Some(Ok(frame)) = frame else { break };
                    liveness.heard();
                    let Message::Text(text) = frame else { continue };
                    let Ok(ServerMessage::TripEvent(event)) = serde_json::from_str::<ServerMessage>(&text) else {
                        continue;
                    };
                    if let Some(journal) = &city.config.journal {
                        journal.streamed(event.seq, last_seq);
                    }
                    if event.seq != last_seq + 1 {
                        continue; // a gap or a repeat: recorded above, not counted twice
                    }
                    last_seq = event.seq;
                    if state.is_some() {
                        state = Some(event.trip.state);
                    }
                    match event.event {
                        EventKind::Accepted => Counters::add(&counters.matched),
                        EventKind::Completed => { Counters::add(&counters.completed); return true; }
                        EventKind::Expired => { Counters::add(&counters.expired); return true; }
                        EventKind::Cancelled => { Counters::add(&counters.cancelled); return true; }
                        _ => {}
                    }
                }
            }
        }
        Counters::add(&counters.socket_drops);
        // The stream dropped: its node may be gone. Resume elsewhere from the last seq.
        server = city.other_server(server, &mut rng);
    }
}
