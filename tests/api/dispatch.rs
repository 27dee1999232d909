//! The dispatch loop end to end: real server, real HTTP and WebSocket clients.

use std::time::Duration;

use hail::{
    error::ErrorCode,
    fleet::DriverStatus,
    protocol::{
        DriverMessage, ServerMessage, WithdrawReason, operators::Snapshot, rest::AssignRequest,
    },
    trip::{EventKind, Money, Role, Trip, TripEvent, TripState},
};
use reqwest::StatusCode;
use serde_json::json;

use crate::common::*;

fn seqs(events: &[TripEvent]) -> Vec<i64> {
    events.iter().map(|e| e.seq).collect()
}

fn names(events: &[TripEvent]) -> Vec<EventKind> {
    events.iter().map(|e| e.event).collect()
}

async fn happy_path_from_request_to_fare(backend: Backend) {
    // The pings below come milliseconds apart: far too fast for the odometer's speed
    // check at real speeds, so this test lets any speed count.
    let server = TestServer::start_with(backend, |c| c.limits.max_speed_mps = 1e12).await;
    let passenger = server.passenger().await;
    let (driver, mut driver_ws) = server.online_driver(near_gangnam(300.0)).await;

    let trip = server
        .request_trip(&passenger, gangnam(), city_hall())
        .await;
    assert_eq!(trip.state, TripState::Requested);
    assert_eq!(trip.seq, 1);
    assert_eq!(trip.passenger_id, passenger.id);
    assert_eq!(trip.driver_id, None);
    assert_eq!(trip.fare, None);
    assert_eq!(trip.fare_estimate.currency, "KRW");
    assert!(trip.fare_estimate.amount > 4_800);
    assert!(trip.requested_at.to_rfc3339().ends_with('Z'));

    let mut passenger_ws = server.trip_ws(&trip.id, &passenger.token, 0).await;
    let first = passenger_ws.event().await;
    assert_eq!((first.seq, first.event), (1, EventKind::Requested));
    assert_eq!(first.actor.role, Role::Passenger);
    assert_eq!(first.actor.id.as_deref(), Some(passenger.id.as_str()));

    let offer = driver_ws.offer().await;
    assert_eq!(offer.trip_id, trip.id);
    assert_eq!(offer.pickup, gangnam());
    assert_eq!(offer.dropoff, city_hall());
    assert!(
        (290.0..=310.0).contains(&offer.pickup_distance_m),
        "{offer:?}"
    );
    assert!(offer.pickup_eta_s > 0.0);
    assert_eq!(offer.fare_estimate, trip.fare_estimate);

    let accepted: Trip = server.answer(&driver, &offer, "accept").await.ok();
    assert_eq!(accepted.state, TripState::Accepted);
    assert_eq!(accepted.driver_id.as_deref(), Some(driver.id.as_str()));

    let event = passenger_ws.event().await;
    assert_eq!((event.seq, event.event), (2, EventKind::Accepted));
    assert_eq!(event.trip.driver_id.as_deref(), Some(driver.id.as_str()));
    assert_eq!(event.actor.role, Role::Driver);
    assert_eq!(driver_ws.event().await.event, EventKind::Accepted);

    // The passenger sees the car coming.
    driver_ws
        .send(&DriverMessage::location(near_gangnam(65.0)))
        .await;
    let (trip_id, lat, _) = passenger_ws.location().await;
    assert_eq!(trip_id, trip.id);
    assert_eq!(lat, near_gangnam(65.0).lat());

    for (step, state) in [
        ("arrive", TripState::Arrived),
        ("start", TripState::InProgress),
    ] {
        let moved: Trip = server.step(&driver, &trip.id, step).await.ok();
        assert_eq!(moved.state, state);
    }
    // Drive 5 km north, pinging every 500 m.
    let mut at = gangnam();
    for _ in 0..10 {
        at = at.destination(0.0, 500.0);
        driver_ws.send(&DriverMessage::location(at)).await;
    }
    driver_ws.sync().await;
    let done: Trip = server.step(&driver, &trip.id, "complete").await.ok();
    assert_eq!(done.state, TripState::Completed);
    // 4,800 base + 5 km × 763, plus seconds of waiting: rounded to 100 won.
    assert_eq!(
        done.fare,
        Some(Money {
            amount: 8_600,
            currency: "KRW".into()
        })
    );

    let events = server.events(&trip.id, &passenger.token, 0).await;
    assert_eq!(seqs(&events), [1, 2, 3, 4, 5]);
    assert_eq!(
        names(&events),
        [
            EventKind::Requested,
            EventKind::Accepted,
            EventKind::Arrived,
            EventKind::Started,
            EventKind::Completed
        ]
    );
    assert_eq!(events[4].trip.state, TripState::Completed);
    for event in &events {
        assert_eq!(event.trip_id, trip.id);
        assert_eq!(event.trip.seq, event.seq);
    }
    let mut seen = Vec::new();
    while seen.len() < 3 {
        seen.push(passenger_ws.event().await.seq);
    }
    assert_eq!(seen, [3, 4, 5]);

    // The driver is free again and gets the next ride.
    let second = server.passenger().await;
    let next = server.request_trip(&second, at, gangnam()).await;
    assert_eq!(driver_ws.offer().await.trip_id, next.id);
}

async fn a_declined_offer_goes_to_the_next_driver_and_never_back(backend: Backend) {
    let server = TestServer::start(backend).await;
    let passenger = server.passenger().await;
    let (near, mut near_ws) = server.online_driver(near_gangnam(100.0)).await;
    let (far, mut far_ws) = server.online_driver(near_gangnam(2_000.0)).await;

    let trip = server
        .request_trip(&passenger, gangnam(), city_hall())
        .await;
    let offer = near_ws.offer().await;
    assert_eq!(offer.trip_id, trip.id);
    server
        .answer(&near, &offer, "decline")
        .await
        .expect::<()>(StatusCode::NO_CONTENT);

    let far_offer = far_ws.offer().await;
    assert_eq!(far_offer.trip_id, trip.id);
    assert!((1_990.0..=2_010.0).contains(&far_offer.pickup_distance_m));

    // Answering twice is a conflict; the near driver is not offered the trip again.
    let again = server.answer(&near, &offer, "decline").await;
    assert_eq!(
        again.error(StatusCode::CONFLICT),
        ErrorCode::OfferAlreadyAnswered
    );
    server
        .answer(&far, &far_offer, "decline")
        .await
        .expect::<()>(StatusCode::NO_CONTENT);
    while let Some(message) = near_ws.try_next(Duration::from_millis(300)).await {
        assert!(!matches!(message, ServerMessage::Offer(_)), "{message:?}");
    }
    assert_eq!(
        server.trip(&trip.id, &passenger.token).await.state,
        TripState::Requested
    );
}

async fn an_unanswered_offer_lapses_and_moves_on(backend: Backend) {
    let server = TestServer::start_with(backend, |c| c.dispatch.offer_timeout_ms = 300).await;
    let passenger = server.passenger().await;
    let (near, mut near_ws) = server.online_driver(near_gangnam(100.0)).await;
    let (far, mut far_ws) = server.online_driver(near_gangnam(1_000.0)).await;

    let trip = server
        .request_trip(&passenger, gangnam(), city_hall())
        .await;
    let lapsed = near_ws.offer().await;
    assert_eq!(
        near_ws.withdrawn().await,
        (lapsed.offer_id.clone(), WithdrawReason::Expired)
    );
    let late = server.answer(&near, &lapsed, "accept").await;
    assert_eq!(late.error(StatusCode::CONFLICT), ErrorCode::OfferExpired);

    let offer = far_ws.offer().await;
    assert_eq!(offer.trip_id, trip.id);
    let accepted: Trip = server.answer(&far, &offer, "accept").await.ok();
    assert_eq!(accepted.driver_id.as_deref(), Some(far.id.as_str()));
}

async fn a_trip_nobody_accepts_expires(backend: Backend) {
    let server = TestServer::start_with(backend, |c| c.dispatch.dispatch_deadline_ms = 400).await;
    let passenger = server.passenger().await;
    let trip = server
        .request_trip(&passenger, gangnam(), city_hall())
        .await;
    let mut stream = server.trip_ws(&trip.id, &passenger.token, 1).await;
    let event = stream.event().await;
    assert_eq!((event.seq, event.event), (2, EventKind::Expired));
    assert_eq!(event.trip.state, TripState::Expired);
    assert_eq!(event.actor.role, Role::System);
    assert!(event.reason.is_some());
    // Expired is final; the passenger may request again.
    let cancel = server
        .post(
            &format!("/v1/trips/{}/cancel", trip.id),
            &passenger.token,
            &json!({}),
        )
        .await;
    assert_eq!(
        cancel.error(StatusCode::CONFLICT),
        ErrorCode::InvalidTransition
    );
    server
        .request_trip(&passenger, gangnam(), city_hall())
        .await;
}

async fn a_passenger_cancel_withdraws_the_open_offer(backend: Backend) {
    let server = TestServer::start(backend).await;
    let passenger = server.passenger().await;
    let (driver, mut driver_ws) = server.online_driver(near_gangnam(100.0)).await;
    let trip = server
        .request_trip(&passenger, gangnam(), city_hall())
        .await;
    let offer = driver_ws.offer().await;

    let cancelled: Trip = server
        .post(
            &format!("/v1/trips/{}/cancel", trip.id),
            &passenger.token,
            &json!({"reason": "found another way"}),
        )
        .await
        .ok();
    assert_eq!((cancelled.state, cancelled.seq), (TripState::Cancelled, 2));
    assert_eq!(
        driver_ws.withdrawn().await,
        (offer.offer_id.clone(), WithdrawReason::Cancelled)
    );
    let late = server.answer(&driver, &offer, "accept").await;
    assert_eq!(late.error(StatusCode::CONFLICT), ErrorCode::OfferExpired);
    // The event says who cancelled, and why.
    let events = server.events(&trip.id, &passenger.token, 1).await;
    assert_eq!(events[0].actor.role, Role::Passenger);
    assert_eq!(events[0].reason.as_deref(), Some("found another way"));

    // Cancelling an accepted trip frees the driver for the next request.
    let trip = server
        .request_trip(&passenger, gangnam(), city_hall())
        .await;
    let offer = driver_ws.offer().await;
    server.answer(&driver, &offer, "accept").await.ok::<Trip>();
    let path = format!("/v1/trips/{}/cancel", trip.id);
    let without_body = server
        .call(
            reqwest::Method::POST,
            &path,
            Some(&passenger.token),
            None::<&()>,
        )
        .await;
    assert_eq!(without_body.status, StatusCode::OK, "{}", without_body.body);
    assert_eq!(driver_ws.event().await.event, EventKind::Accepted);
    assert_eq!(driver_ws.event().await.event, EventKind::Cancelled);
    let other = server.passenger().await;
    let trip = server.request_trip(&other, gangnam(), city_hall()).await;
    assert_eq!(driver_ws.offer().await.trip_id, trip.id);
}

async fn a_driver_cancel_before_pickup_redispatches_to_someone_else(backend: Backend) {
    let server = TestServer::start(backend).await;
    let passenger = server.passenger().await;
    let (first, mut first_ws) = server.online_driver(near_gangnam(100.0)).await;
    let (second, mut second_ws) = server.online_driver(near_gangnam(1_500.0)).await;
    let trip = server
        .request_trip(&passenger, gangnam(), city_hall())
        .await;

    let offer = first_ws.offer().await;
    server.answer(&first, &offer, "accept").await.ok::<Trip>();
    server.step(&first, &trip.id, "arrive").await.ok::<Trip>();
    let mut first_stream = server.trip_ws(&trip.id, &first.token, 3).await;
    let handed_back: Trip = server.step(&first, &trip.id, "cancel").await.ok();
    assert_eq!(handed_back.state, TripState::Requested);
    assert_eq!(handed_back.driver_id, None);
    // The driver sees their own cancellation, and then the trip is none of their business.
    assert_eq!(first_stream.event().await.event, EventKind::DriverCancelled);
    assert_eq!(
        first_stream.close_code_within(PATIENCE).await,
        Some(hail::protocol::close_code::NO_LONGER_YOURS)
    );

    let offer = second_ws.offer().await;
    assert_eq!(offer.trip_id, trip.id);
    // The first driver no longer sees the trip, and is not offered it again.
    let hidden = server
        .get(&format!("/v1/trips/{}", trip.id), &first.token)
        .await;
    assert_eq!(hidden.error(StatusCode::NOT_FOUND), ErrorCode::NotFound);
    let events = server.events(&trip.id, &passenger.token, 0).await;
    assert_eq!(
        names(&events),
        [
            EventKind::Requested,
            EventKind::Accepted,
            EventKind::Arrived,
            EventKind::DriverCancelled
        ]
    );
    server
        .answer(&second, &offer, "decline")
        .await
        .expect::<()>(StatusCode::NO_CONTENT);
    while let Some(message) = first_ws.try_next(Duration::from_millis(300)).await {
        assert!(!matches!(message, ServerMessage::Offer(_)), "{message:?}");
    }
}

async fn an_offer_is_won_once(backend: Backend) {
    let server = TestServer::start(backend).await;
    let passenger = server.passenger().await;
    let (driver, mut driver_ws) = server.online_driver(near_gangnam(100.0)).await;
    server
        .request_trip(&passenger, gangnam(), city_hall())
        .await;
    let offer = driver_ws.offer().await;
    let (a, b) = tokio::join!(
        server.answer(&driver, &offer, "accept"),
        server.answer(&driver, &offer, "accept")
    );
    let mut statuses = [a.status, b.status];
    statuses.sort();
    assert_eq!(
        statuses,
        [StatusCode::OK, StatusCode::CONFLICT],
        "{a:?} {b:?}"
    );
    let again = server.answer(&driver, &offer, "accept").await;
    assert_eq!(
        again.error(StatusCode::CONFLICT),
        ErrorCode::OfferAlreadyAnswered
    );
}

async fn an_operator_assigns_and_sees_the_fleet(backend: Backend) {
    let server = TestServer::start(backend).await;
    let passenger = server.passenger().await;
    let (near, mut near_ws) = server.online_driver(near_gangnam(100.0)).await;
    let (chosen, mut chosen_ws) = server.online_driver(near_gangnam(2_500.0)).await;
    let trip = server
        .request_trip(&passenger, gangnam(), city_hall())
        .await;
    let offer = near_ws.offer().await;

    let snapshot: Snapshot = server.snapshot().await;
    assert_eq!(snapshot.stats.drivers_online, 2);
    assert_eq!(snapshot.stats.drivers_offered, 1);
    assert_eq!(snapshot.stats.trips_requested, 1);
    assert_eq!(snapshot.trips[0].id, trip.id);
    assert!(
        snapshot
            .offers
            .iter()
            .any(|line| line.offer_id == offer.offer_id)
    );

    let path = format!("/v1/trips/{}/assign", trip.id);
    let assigned: Trip = server
        .post(
            &path,
            OPERATOR_TOKEN,
            &AssignRequest {
                driver_id: chosen.id.clone(),
                reason: None,
            },
        )
        .await
        .ok();
    assert_eq!(assigned.driver_id.as_deref(), Some(chosen.id.as_str()));
    assert_eq!(
        near_ws.withdrawn().await,
        (offer.offer_id.clone(), WithdrawReason::Taken)
    );
    let event = chosen_ws.event().await;
    assert_eq!(event.event, EventKind::Accepted);
    assert_eq!(
        event.actor.role,
        Role::Operator,
        "the event says an operator did it"
    );
    let late = server.answer(&near, &offer, "accept").await;
    assert_eq!(late.status, StatusCode::CONFLICT);

    // A busy driver cannot be assigned a second trip; an unknown one is 404.
    let other = server.passenger().await;
    let second = server.request_trip(&other, gangnam(), city_hall()).await;
    let path = format!("/v1/trips/{}/assign", second.id);
    let busy = server
        .post(
            &path,
            OPERATOR_TOKEN,
            &AssignRequest {
                driver_id: chosen.id.clone(),
                reason: None,
            },
        )
        .await;
    assert_eq!(busy.status, StatusCode::CONFLICT, "{}", busy.body);
    let nobody = server
        .post(
            &path,
            OPERATOR_TOKEN,
            &AssignRequest {
                driver_id: "drv_nobody".into(),
                reason: None,
            },
        )
        .await;
    assert_eq!(nobody.error(StatusCode::NOT_FOUND), ErrorCode::NotFound);
    let not_an_operator = server
        .post(
            &path,
            &passenger.token,
            &AssignRequest {
                driver_id: near.id.clone(),
                reason: None,
            },
        )
        .await;
    assert_eq!(
        not_an_operator.error(StatusCode::FORBIDDEN),
        ErrorCode::Forbidden
    );
}

async fn one_active_trip_per_passenger_and_idempotent_retries(backend: Backend) {
    let server = TestServer::start(backend).await;
    let passenger = server.passenger().await;
    let body = json!({"pickup": gangnam(), "dropoff": city_hall()});
    let send = |key: &'static str, body: serde_json::Value| {
        server
            .http
            .post(format!("{}/v1/trips", server.base))
            .bearer_auth(&passenger.token)
            .header("Idempotency-Key", key)
            .json(&body)
            .send()
    };
    let first = send("k1", body.clone()).await.unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    let first: Trip = first.json().await.unwrap();
    let retry = send("k1", body.clone()).await.unwrap();
    assert_eq!(retry.status(), StatusCode::CREATED);
    let retry: Trip = retry.json().await.unwrap();
    assert_eq!(retry.id, first.id);

    let changed = send("k1", json!({"pickup": city_hall(), "dropoff": gangnam()}))
        .await
        .unwrap();
    assert_eq!(changed.status(), StatusCode::CONFLICT);
    let changed: hail::protocol::rest::ErrorBody = changed.json().await.unwrap();
    assert_eq!(changed.error.code, ErrorCode::IdempotencyKeyReused);

    let second = server.post("/v1/trips", &passenger.token, &body).await;
    assert_eq!(
        second.error(StatusCode::CONFLICT),
        ErrorCode::ActiveTripExists
    );
    let events = server.events(&first.id, &passenger.token, 0).await;
    assert_eq!(seqs(&events), [1]);
}

async fn a_driver_that_goes_offline_gets_no_offers(backend: Backend) {
    let server = TestServer::start(backend).await;
    let passenger = server.passenger().await;
    let (_driver, mut ws) = server.online_driver(near_gangnam(100.0)).await;
    ws.send(&DriverMessage::Status {
        status: DriverStatus::Offline,
    })
    .await;
    ws.sync().await;
    let trip = server
        .request_trip(&passenger, gangnam(), city_hall())
        .await;
    assert!(ws.try_next(Duration::from_millis(300)).await.is_none());
    ws.send(&DriverMessage::Status {
        status: DriverStatus::Available,
    })
    .await;
    assert_eq!(ws.offer().await.trip_id, trip.id);
}

/// DESIGN §4: a driver without a live socket is never offered a trip (the offer could not
/// arrive); the connected one further away is asked at once instead.
async fn a_driver_without_a_socket_is_skipped_for_a_connected_one(backend: Backend) {
    let server = TestServer::start(backend).await;
    let passenger = server.passenger().await;
    let (dropped, dropped_ws) = server.online_driver(near_gangnam(100.0)).await;
    let (_connected, mut connected_ws) = server.online_driver(near_gangnam(400.0)).await;
    drop(dropped_ws);
    eventually("the dropped driver shows as not connected", || async {
        let snapshot = server.snapshot().await;
        snapshot
            .drivers
            .iter()
            .any(|d| d.id == dropped.id && !d.connected)
            .then_some(())
    })
    .await;
    let trip = server
        .request_trip(&passenger, gangnam(), city_hall())
        .await;
    let offer = connected_ws.offer().await;
    assert_eq!(offer.trip_id, trip.id);
    assert!((390.0..=410.0).contains(&offer.pickup_distance_m));
}

async fn a_dropped_driver_stays_online_through_the_grace_period_only(backend: Backend) {
    let server = TestServer::start_with(backend, |c| {
        // Stale well after the reconnect below has been dispatched, even on a busy machine.
        c.dispatch.stale_after_ms = 1_000;
        c.dispatch.offline_after_ms = 1_200;
    })
    .await;
    let (driver, ws) = server.online_driver(near_gangnam(100.0)).await;
    drop(ws);
    let online = |snapshot: &Snapshot| snapshot.drivers.iter().any(|d| d.id == driver.id);
    // Still listed right after the drop (mobile networks flap)...
    assert!(online(&server.snapshot().await));
    // ...and gone once the grace period has passed without a ping.
    eventually("the driver goes offline", || async {
        (!online(&server.snapshot().await)).then_some(())
    })
    .await;
    // Reconnecting brings it back, dispatchable.
    let passenger = server.passenger().await;
    let mut ws = server.connect_driver(&driver, near_gangnam(100.0)).await;
    let trip = server
        .request_trip(&passenger, gangnam(), city_hall())
        .await;
    assert_eq!(ws.offer().await.trip_id, trip.id);
}

/// An open offer outlives the socket it was sent on: a driver reconnecting gets it again
/// and can still accept it.
async fn a_reconnecting_driver_gets_its_open_offer_again(backend: Backend) {
    let server = TestServer::start(backend).await;
    let passenger = server.passenger().await;
    let (driver, mut ws) = server.online_driver(near_gangnam(100.0)).await;
    let trip = server
        .request_trip(&passenger, gangnam(), city_hall())
        .await;
    let offer = ws.offer().await;
    drop(ws);
    let mut again = server.connect_driver(&driver, near_gangnam(100.0)).await;
    let resent = again.offer().await;
    assert_eq!(resent.offer_id, offer.offer_id);
    let accepted: Trip = server.answer(&driver, &resent, "accept").await.ok();
    assert_eq!(accepted.id, trip.id);
}

/// Issue 10's forged fare: accept, arrive, start, then pings alternating between Seoul and
/// its antipode. The odometer leaves out what no taxi can drive; and were the speed check
/// to let such pings through, the fare would still stop at its cap, flagged for review.
async fn a_forged_odometer_cannot_charge_a_fortune(backend: Backend) {
    async fn ride_to_the_antipode(server: &TestServer) -> Trip {
        let passenger = server.passenger().await;
        let (driver, mut ws) = server.online_driver(near_gangnam(100.0)).await;
        let trip = server
            .request_trip(&passenger, gangnam(), city_hall())
            .await;
        let offer = ws.offer().await;
        server.answer(&driver, &offer, "accept").await.ok::<Trip>();
        server.step(&driver, &trip.id, "arrive").await.ok::<Trip>();
        server.step(&driver, &trip.id, "start").await.ok::<Trip>();
        let antipode = hail::geometry::LatLng::new(-37.4979, 127.0276 - 180.0).unwrap();
        for i in 0..10 {
            let at = if i % 2 == 0 { antipode } else { gangnam() };
            ws.send(&DriverMessage::location(at)).await;
        }
        ws.sync().await;
        server.step(&driver, &trip.id, "complete").await.ok()
    }

    let server = TestServer::start(backend).await;
    let done = ride_to_the_antipode(&server).await;
    let fare = done.fare.clone().unwrap();
    assert!(
        fare.amount <= done.fare_estimate.amount,
        "{fare:?} against {:?}",
        done.fare_estimate
    );
    let events = server.events(&done.id, OPERATOR_TOKEN, 4).await;
    let note = events[0].reason.clone().unwrap_or_default();
    assert!(note.contains("impossible speed"), "{note}");

    let careless = TestServer::start_with(backend, |c| c.limits.max_speed_mps = 1e12).await;
    let done = ride_to_the_antipode(&careless).await;
    let fare = done.fare.clone().unwrap();
    assert_eq!(
        fare.amount,
        done.fare_estimate.amount * 3,
        "capped at 3× the estimate"
    );
    let events = careless.events(&done.id, OPERATOR_TOKEN, 4).await;
    let note = events[0].reason.clone().unwrap_or_default();
    assert!(note.contains("capped"), "{note}");
    assert!(
        careless
            .metrics()
            .await
            .contains("\nhail_fares_capped_total 1\n")
    );
}

/// A driver who takes over a handed-back trip reads no trace of who had it before.
async fn a_driver_sees_no_other_drivers_id(backend: Backend) {
    let server = TestServer::start(backend).await;
    let passenger = server.passenger().await;
    let (first, mut first_ws) = server.online_driver(near_gangnam(100.0)).await;
    let (second, mut second_ws) = server.online_driver(near_gangnam(900.0)).await;
    let trip = server
        .request_trip(&passenger, gangnam(), city_hall())
        .await;
    let offer = first_ws.offer().await;
    server.answer(&first, &offer, "accept").await.ok::<Trip>();
    server.step(&first, &trip.id, "cancel").await.ok::<Trip>();
    let offer = second_ws.offer().await;
    server.answer(&second, &offer, "accept").await.ok::<Trip>();
    let seen = server.events(&trip.id, &second.token, 0).await;
    let mut stream = server.trip_ws(&trip.id, &second.token, 0).await;
    let mut streamed = Vec::new();
    while streamed.len() < seen.len() {
        streamed.push(stream.event().await);
    }
    for event in seen.iter().chain(&streamed) {
        let text = serde_json::to_string(event).unwrap();
        assert!(!text.contains(&first.id), "{text}");
    }
    // The passenger and operators see the whole story.
    let all = server.events(&trip.id, &passenger.token, 0).await;
    assert_eq!(all[1].trip.driver_id.as_deref(), Some(first.id.as_str()));
}

crate::on_both_stores!(
    happy_path_from_request_to_fare,
    a_forged_odometer_cannot_charge_a_fortune,
    a_driver_sees_no_other_drivers_id,
    a_declined_offer_goes_to_the_next_driver_and_never_back,
    an_unanswered_offer_lapses_and_moves_on,
    a_trip_nobody_accepts_expires,
    a_passenger_cancel_withdraws_the_open_offer,
    a_driver_cancel_before_pickup_redispatches_to_someone_else,
    an_offer_is_won_once,
    an_operator_assigns_and_sees_the_fleet,
    one_active_trip_per_passenger_and_idempotent_retries,
    a_driver_that_goes_offline_gets_no_offers,
    a_driver_without_a_socket_is_skipped_for_a_connected_one,
    a_dropped_driver_stays_online_through_the_grace_period_only,
    a_reconnecting_driver_gets_its_open_offer_again,
);
