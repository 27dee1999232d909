//! What an operator needs for a real shift (issue 13): no trip left stuck when its driver
//! vanishes, a way to resolve a ride under way, who did what and why in every event,
//! search, driver cards, assign candidates ranked by ETA, figures that survive a restart.

use hail::{
    error::ErrorCode,
    fleet::DriverState,
    geometry::LatLng,
    protocol::{
        operators::{Candidates, DriverCard, SearchResults},
        rest::AssignRequest,
    },
    trip::{Actor, EventKind, Role, Trip, TripState},
};
use reqwest::StatusCode;
use serde_json::json;

use crate::common::*;

/// Short enough for a test, long past a reconnect on a busy machine.
const LOST_AFTER_MS: u64 = 1_500;

async fn with_short_loss(backend: Backend) -> TestServer {
    TestServer::start_with(backend, |c| c.dispatch.driver_lost_after_ms = LOST_AFTER_MS).await
}

/// A passenger's trip from `pickup`, accepted by a driver 100 m away, who then arrived and
/// (if `started`) picked the passenger up.
async fn ride(server: &TestServer, pickup: LatLng, started: bool) -> (Account, Ws, Account, Trip) {
    let passenger = server.passenger().await;
    let near = LatLng::new(pickup.lat() + 0.0009, pickup.lng()).unwrap();
    let (driver, mut ws) = server.online_driver(near).await;
    let trip = server.request_trip(&passenger, pickup, city_hall()).await;
    let offer = ws.offer().await;
    assert_eq!(offer.trip_id, trip.id);
    let _: Trip = server.answer(&driver, &offer, "accept").await.ok();
    let mut steps = vec!["arrive"];
    if started {
        steps.push("start");
    }
    let mut trip = trip;
    for step in steps {
        trip = server.step(&driver, &trip.id, step).await.ok();
    }
    (driver, ws, passenger, trip)
}

async fn a_vanished_driver_gives_the_trip_back_before_pickup(backend: Backend) {
    let server = with_short_loss(backend).await;
    let (first, first_ws, passenger, trip) = ride(&server, gangnam(), false).await;
    assert_eq!(trip.state, TripState::Arrived);
    let mut stream = server.trip_ws(&trip.id, &passenger.token, trip.seq).await;
    drop(first_ws);

    let lost = stream.event().await;
    assert_eq!(lost.event, EventKind::DriverLost);
    assert_eq!(lost.actor, Actor::system());
    let reason = lost.reason.clone().unwrap_or_default();
    assert!(reason.contains("offline"), "{reason}");
    assert_eq!(lost.trip.state, TripState::Requested);
    assert_eq!(lost.trip.driver_id, None);

    // Dispatched again, to someone else; the lost driver, back online, is kept off it.
    let _first_again = server.connect_driver(&first, near_gangnam(50.0)).await;
    let (_second, mut second_ws) = server.online_driver(near_gangnam(900.0)).await;
    let offer = second_ws.offer().await;
    assert_eq!(offer.trip_id, trip.id);
    let listed: Candidates = server
        .get(
            &format!("/v1/ops/trips/{}/candidates", trip.id),
            OPERATOR_TOKEN,
        )
        .await
        .ok();
    let first_listed = listed
        .candidates
        .iter()
        .find(|c| c.driver_id == first.id)
        .expect("the returning driver is listed for a manual assign");
    assert_eq!(first_listed.excluded.as_deref(), Some("driver_lost"));
}

async fn a_vanished_driver_mid_ride_is_flagged_for_an_operator_to_resolve(backend: Backend) {
    let server = with_short_loss(backend).await;
    let (driver_a, ws_a, passenger_a, ride_a) = ride(&server, gangnam(), true).await;
    let (_driver_b, ws_b, _passenger_b, ride_b) = ride(&server, near_gangnam(2_000.0), true).await;
    let (_driver_c, _ws_c, _passenger_c, ride_c) = ride(&server, near_gangnam(4_000.0), true).await;
    drop((ws_a, ws_b));

    let flags = eventually("both rides flagged", || async {
        let flags = server.snapshot().await.flags;
        (flags.len() == 2).then_some(flags)
    })
    .await;
    let flagged: Vec<&str> = flags.iter().map(|f| f.trip_id.as_str()).collect();
    assert!(flagged.contains(&ride_a.id.as_str()) && flagged.contains(&ride_b.id.as_str()));
    assert!(
        flags
            .iter()
            .all(|f| f.flag == "driver_lost" && f.reason.is_some())
    );
    // The ride goes on as far as anyone knows: same state, same driver.
    let a = server.trip(&ride_a.id, OPERATOR_TOKEN).await;
    assert_eq!(a.state, TripState::InProgress);
    assert_eq!(a.driver_id.as_deref(), Some(driver_a.id.as_str()));
    assert_eq!(a.seq, ride_a.seq + 1);

    // Ending a ride under way needs a reason, and only an operator may.
    let path = |trip: &Trip, action: &str| format!("/v1/trips/{}/{action}", trip.id);
    for action in ["cancel", "complete"] {
        let refused = server
            .post(&path(&ride_a, action), OPERATOR_TOKEN, &json!({}))
            .await;
        assert_eq!(
            refused.error(StatusCode::CONFLICT),
            ErrorCode::ReasonRequired
        );
    }
    // Before pickup an operator's cancel needs none; completing a trip nobody picked up
    // is refused whoever asks, and changes nothing.
    let waiting = server.passenger().await;
    let early = server
        .request_trip(&waiting, near_gangnam(30_000.0), city_hall())
        .await;
    let refused = server
        .post(
            &path(&early, "complete"),
            OPERATOR_TOKEN,
            &json!({"reason": "test"}),
        )
        .await;
    assert_eq!(
        refused.error(StatusCode::CONFLICT),
        ErrorCode::InvalidTransition
    );
    let refused = server
        .post(&path(&early, "complete"), &waiting.token, &json!({}))
        .await;
    assert_eq!(refused.error(StatusCode::FORBIDDEN), ErrorCode::Forbidden);
    assert_eq!(server.trip(&early.id, OPERATOR_TOKEN).await, early);
    let _: Trip = server
        .post(&path(&early, "cancel"), OPERATOR_TOKEN, &json!({}))
        .await
        .ok();
    let refused = server
        .post(
            &path(&ride_a, "cancel"),
            &passenger_a.token,
            &json!({"reason": "late"}),
        )
        .await;
    assert_eq!(
        refused.error(StatusCode::CONFLICT),
        ErrorCode::InvalidTransition
    );
    assert_eq!(
        server.trip(&ride_a.id, OPERATOR_TOKEN).await,
        a,
        "nothing changed"
    );

    // Completed at the estimate, cancelled: each says who and why.
    let why = "passenger phoned: dropped off at City Hall";
    let done: Trip = server
        .post(
            &path(&ride_a, "complete"),
            OPERATOR_TOKEN,
            &json!({ "reason": why }),
        )
        .await
        .ok();
    assert_eq!(done.state, TripState::Completed);
    assert_eq!(done.fare, Some(done.fare_estimate.clone()));
    let cancelled: Trip = server
        .post(
            &path(&ride_b, "cancel"),
            OPERATOR_TOKEN,
            &json!({"reason": "no contact"}),
        )
        .await
        .ok();
    assert_eq!(cancelled.state, TripState::Cancelled);
    let events = server.events(&ride_a.id, &passenger_a.token, 0).await;
    let last = events.last().unwrap();
    assert_eq!(last.event, EventKind::Completed);
    assert_eq!(last.actor, Actor::new(Role::Operator, "operator"));
    assert_eq!(last.reason.as_deref(), Some(why));
    let lost = events.iter().filter(|e| e.event == EventKind::DriverLost);
    assert_eq!(lost.count(), 1, "flagged once");

    // An operator may also end a healthy ride (the driver still connected).
    let ended: Trip = server
        .post(
            &path(&ride_c, "cancel"),
            OPERATOR_TOKEN,
            &json!({"reason": "fraud check"}),
        )
        .await
        .ok();
    assert_eq!(ended.state, TripState::Cancelled);
    assert!(server.snapshot().await.flags.is_empty());
    // Nothing left on the resolved drivers: back online, they are available.
    let _back = server.connect_driver(&driver_a, near_gangnam(0.0)).await;
    let snapshot = server.snapshot().await;
    let view = snapshot
        .drivers
        .iter()
        .find(|d| d.id == driver_a.id)
        .unwrap();
    assert_eq!(view.state, DriverState::Available);
    assert_eq!(snapshot.stats.trips_active, 0);
}

async fn operators_find_trips_drivers_and_passengers(backend: Backend) {
    let server = TestServer::start(backend).await;
    let kim = server.driver_named("Kim Minsoo", "서울12가3456").await;
    let _lee = server.driver_named("Lee 50%_off", "34나5678").await;
    let _kim_ws = server.connect_driver(&kim, near_gangnam(100.0)).await;
    let passenger = server.passenger().await;
    let trip = server
        .request_trip(&passenger, gangnam(), city_hall())
        .await;

    let search = |q: &str| {
        let path = format!("/v1/ops/search?q={}", urlencode(q));
        let server = &server;
        async move { server.get(&path, OPERATOR_TOKEN).await }
    };
    let by_plate: SearchResults = search("12가").await.ok();
    assert_eq!(by_plate.drivers.len(), 1);
    let card = &by_plate.drivers[0];
    assert_eq!(
        (card.id.as_str(), card.name.as_str()),
        (kim.id.as_str(), "Kim Minsoo")
    );
    assert_eq!(card.plate.as_deref(), Some("서울12가3456"));
    let online = card.online.as_ref().expect("online");
    assert!(online.connected);
    let by_name: SearchResults = search("kim min").await.ok();
    assert_eq!(by_name.drivers[0].id, kim.id);
    // `%` and `_` are text, not wildcards.
    let literal: SearchResults = search("%_").await.ok();
    assert_eq!(literal.drivers.len(), 1);
    assert_eq!(literal.drivers[0].name, "Lee 50%_off");
    let by_trip: SearchResults = search(&trip.id[..trip.id.len() - 4]).await.ok();
    assert_eq!(
        by_trip.trips.first().map(|t| t.id.as_str()),
        Some(trip.id.as_str())
    );
    let by_passenger: SearchResults = search(&passenger.id).await.ok();
    assert_eq!(by_passenger.passengers.len(), 1);
    assert_eq!(by_passenger.passengers[0].name, "Minji");
    assert_eq!(
        by_passenger.trips[0].id, trip.id,
        "with the passenger's trip"
    );
    let nothing: SearchResults = search("nobody-by-that-name").await.ok();
    assert!(
        nothing.trips.is_empty() && nothing.drivers.is_empty() && nothing.passengers.is_empty()
    );

    for bad in ["", "   ", &"x".repeat(101)] {
        assert_eq!(
            search(bad).await.error(StatusCode::BAD_REQUEST),
            ErrorCode::InvalidBody
        );
    }
    let refused = server.get("/v1/ops/search?q=kim", &passenger.token).await;
    assert_eq!(refused.error(StatusCode::FORBIDDEN), ErrorCode::Forbidden);

    let card: DriverCard = server
        .get(&format!("/v1/ops/drivers/{}", kim.id), OPERATOR_TOKEN)
        .await
        .ok();
    assert_eq!(card.plate.as_deref(), Some("서울12가3456"));
    let online = card.online.expect("online");
    let heard = hail::trip::Timestamp::now().millis() - online.last_ping_at.millis();
    assert!((0..60_000).contains(&heard), "last ping {heard} ms ago");
    for unknown in [passenger.id.as_str(), "drv_nobody"] {
        let missing = server
            .get(&format!("/v1/ops/drivers/{unknown}"), OPERATOR_TOKEN)
            .await;
        assert_eq!(missing.error(StatusCode::NOT_FOUND), ErrorCode::NotFound);
    }
}

async fn assign_candidates_rank_by_eta_and_say_who_declined(backend: Backend) {
    let server = TestServer::start(backend).await;
    let passenger = server.passenger().await;
    let (near, mut near_ws) = server.online_driver(near_gangnam(200.0)).await;
    let trip = server
        .request_trip(&passenger, gangnam(), city_hall())
        .await;
    let offer = near_ws.offer().await;
    server
        .answer(&near, &offer, "decline")
        .await
        .expect::<serde_json::Value>(StatusCode::NO_CONTENT);
    let (far, _far_ws) = server.online_driver(near_gangnam(1_500.0)).await;
    let (farthest, _farthest_ws) = server.online_driver(near_gangnam(-3_000.0)).await;

    let listed: Candidates = server
        .get(
            &format!("/v1/ops/trips/{}/candidates", trip.id),
            OPERATOR_TOKEN,
        )
        .await
        .ok();
    let order: Vec<&str> = listed
        .candidates
        .iter()
        .map(|c| c.driver_id.as_str())
        .collect();
    assert_eq!(
        order,
        [near.id.as_str(), far.id.as_str(), farthest.id.as_str()]
    );
    assert_eq!(listed.candidates[0].excluded.as_deref(), Some("declined"));
    assert!(listed.candidates[1..].iter().all(|c| c.excluded.is_none()));
    let etas: Vec<f64> = listed.candidates.iter().map(|c| c.eta_s).collect();
    assert!(
        etas.windows(2).all(|w| w[0] <= w[1]) && etas[0] > 0.0,
        "{etas:?}"
    );
    assert!((150.0..=250.0).contains(&listed.candidates[0].distance_m));
    assert_eq!(listed.candidates[0].name, "Junho");

    // The operator's call: the one who declined, with the reason on record.
    let assigned: Trip = server
        .post(
            &format!("/v1/trips/{}/assign", trip.id),
            OPERATOR_TOKEN,
            &AssignRequest {
                driver_id: near.id.clone(),
                reason: Some("agreed by phone".into()),
            },
        )
        .await
        .ok();
    assert_eq!(assigned.driver_id.as_deref(), Some(near.id.as_str()));
    let events = server.events(&trip.id, OPERATOR_TOKEN, 0).await;
    let accepted = events.last().unwrap();
    assert_eq!(accepted.event, EventKind::Accepted);
    assert_eq!(accepted.actor, Actor::new(Role::Operator, "operator"));
    assert_eq!(accepted.reason.as_deref(), Some("agreed by phone"));

    let missing = server
        .get("/v1/ops/trips/trp_nothing/candidates", OPERATOR_TOKEN)
        .await;
    assert_eq!(missing.error(StatusCode::NOT_FOUND), ErrorCode::NotFound);
}

async fn the_figures_survive_a_restart(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(backend, &dir).await;
    let mut server = TestServer::from_config(config.clone(), dir).await;
    let (driver, ws, _passenger, trip) = ride(&server, gangnam(), true).await;
    let _: Trip = server.step(&driver, &trip.id, "complete").await.ok();
    let unlucky = server.passenger().await;
    let cancelled = server
        .request_trip(&unlucky, near_gangnam(9_000.0), city_hall())
        .await;
    let _: Trip = server
        .post(
            &format!("/v1/trips/{}/cancel", cancelled.id),
            &unlucky.token,
            &json!({}),
        )
        .await
        .ok();
    let before = server.snapshot().await.figures;
    assert_eq!(
        (before.requested, before.completed, before.cancelled),
        (2, 1, 1)
    );
    drop(ws);
    server.stop().await;

    let again = TestServer::from_config(config, tempfile::tempdir().unwrap()).await;
    let after = again.snapshot().await.figures;
    assert_eq!(
        (
            after.requested,
            after.completed,
            after.cancelled,
            after.acceptance_rate
        ),
        (
            before.requested,
            before.completed,
            before.cancelled,
            before.acceptance_rate
        )
    );
    assert_eq!(after.accept_p50_s, before.accept_p50_s);
    let sum = |f: &hail::protocol::operators::Figures| {
        f.trend
            .iter()
            .map(|m| m.offers_made + m.offers_accepted)
            .sum::<u32>()
    };
    assert_eq!(sum(&after), sum(&before));
    assert!(sum(&after) >= 2);
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

crate::on_both_stores!(
    a_vanished_driver_gives_the_trip_back_before_pickup,
    a_vanished_driver_mid_ride_is_flagged_for_an_operator_to_resolve,
    operators_find_trips_drivers_and_passengers,
    assign_candidates_rank_by_eta_and_say_who_declined,
    the_figures_survive_a_restart,
);
