//! The dispatch loop end to end: real server, real HTTP and WebSocket clients.

mod common;

use std::time::Duration;

use common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

fn seqs(events: &[Value]) -> Vec<i64> {
    events.iter().map(|e| e["seq"].as_i64().unwrap()).collect()
}

fn names(events: &[Value]) -> Vec<&str> {
    events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect()
}

async fn happy_path_from_request_to_fare(backend: Backend) {
    let server = TestServer::start(backend).await;
    let passenger = server.passenger().await;
    let (driver, mut driver_ws) = server.online_driver(near_gangnam(300.0)).await;

    let trip = server
        .request_trip(&passenger, gangnam(), city_hall())
        .await;
    let trip_id = trip["id"].as_str().unwrap();
    assert_eq!(trip["state"], "requested");
    assert_eq!(trip["seq"], 1);
    assert_eq!(trip["passenger_id"], passenger.id.as_str());
    assert_eq!(trip["driver_id"], Value::Null);
    assert_eq!(trip["fare"], Value::Null);
    assert_eq!(trip["fare_estimate"]["currency"], "KRW");
    assert!(trip["fare_estimate"]["amount"].as_i64().unwrap() > 4_800);
    assert!(trip["requested_at"].as_str().unwrap().ends_with('Z'));

    let mut passenger_ws = server.trip_ws(trip_id, &passenger.token, 0).await;
    let first = passenger_ws.next_of("trip_event").await;
    assert_eq!(
        (first["seq"].as_i64(), first["event"].as_str()),
        (Some(1), Some("requested"))
    );

    let offer = driver_ws.next_of("offer").await;
    assert_eq!(offer["trip_id"], trip_id);
    assert_eq!(offer["pickup"], gangnam());
    assert_eq!(offer["dropoff"], city_hall());
    let distance = offer["pickup_distance_m"].as_f64().unwrap();
    assert!((290.0..=310.0).contains(&distance), "{distance}");
    assert!(offer["pickup_eta_s"].as_f64().unwrap() > 0.0);
    assert_eq!(offer["fare_estimate"], trip["fare_estimate"]);
    assert!(offer["expires_at"].as_str().is_some());

    let offer_id = offer["offer_id"].as_str().unwrap();
    let (status, accepted) = server
        .post(
            &format!("/v1/offers/{offer_id}/accept"),
            &driver.token,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{accepted}");
    assert_eq!(accepted["state"], "accepted");
    assert_eq!(accepted["driver_id"], driver.id.as_str());

    let event = passenger_ws.next_of("trip_event").await;
    assert_eq!(
        (event["seq"].as_i64(), event["event"].as_str()),
        (Some(2), Some("accepted"))
    );
    assert_eq!(event["trip"]["driver_id"], driver.id.as_str());
    let event = driver_ws.next_of("trip_event").await;
    assert_eq!(event["event"], "accepted");

    // The passenger sees the car coming.
    driver_ws
        .send(json!({"type": "location", "lat": 37.4985, "lng": 127.0276}))
        .await;
    let location = passenger_ws.next_of("driver_location").await;
    assert_eq!(location["trip_id"], trip_id);
    assert_eq!(location["lat"], 37.4985);
    assert!(location.get("seq").is_none());

    for (step, state) in [("arrive", "arrived"), ("start", "in_progress")] {
        let (status, body) = server
            .post(
                &format!("/v1/trips/{trip_id}/{step}"),
                &driver.token,
                json!({}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["state"], state);
    }
    // Drive 5 km north, pinging every 500 m.
    let mut lat = 37.4979;
    for _ in 0..10 {
        lat += 500.0 / 111_195.0;
        driver_ws
            .send(json!({"type": "location", "lat": lat, "lng": 127.0276}))
            .await;
    }
    driver_ws.sync().await;
    let (status, done) = server
        .post(
            &format!("/v1/trips/{trip_id}/complete"),
            &driver.token,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(done["state"], "completed");
    // 4,800 base + 5 km × 763, plus seconds of waiting: rounded to 100 won.
    assert_eq!(done["fare"], json!({"amount": 8_600, "currency": "KRW"}));

    let events = server.events(trip_id, &passenger.token, 0).await;
    assert_eq!(seqs(&events), [1, 2, 3, 4, 5]);
    assert_eq!(
        names(&events),
        ["requested", "accepted", "arrived", "started", "completed"]
    );
    assert_eq!(events[4]["trip"]["state"], "completed");
    for event in &events {
        assert_eq!(event["trip_id"], trip_id);
        assert_eq!(event["trip"]["seq"], event["seq"]);
    }
    let mut seen = Vec::new();
    while seen.len() < 3 {
        seen.push(
            passenger_ws.next_of("trip_event").await["seq"]
                .as_i64()
                .unwrap(),
        );
    }
    assert_eq!(seen, [3, 4, 5]);

    // The driver is free again and gets the next ride.
    let second = server.passenger().await;
    let trip = server
        .request_trip(&second, json!({"lat": lat, "lng": 127.0276}), gangnam())
        .await;
    let offer = driver_ws.next_of("offer").await;
    assert_eq!(offer["trip_id"], trip["id"]);
}

async fn a_declined_offer_goes_to_the_next_driver_and_never_back(backend: Backend) {
    let server = TestServer::start(backend).await;
    let passenger = server.passenger().await;
    let (near, mut near_ws) = server.online_driver(near_gangnam(100.0)).await;
    let (far, mut far_ws) = server.online_driver(near_gangnam(2_000.0)).await;

    let trip = server
        .request_trip(&passenger, gangnam(), city_hall())
        .await;
    let offer = near_ws.next_of("offer").await;
    assert_eq!(offer["trip_id"], trip["id"]);
    let offer_id = offer["offer_id"].as_str().unwrap();
    let (status, body) = server
        .post(
            &format!("/v1/offers/{offer_id}/decline"),
            &near.token,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");

    let offer = far_ws.next_of("offer").await;
    assert_eq!(offer["trip_id"], trip["id"]);
    let far_offer = offer["offer_id"].as_str().unwrap().to_string();
    assert!((1_990.0..=2_010.0).contains(&offer["pickup_distance_m"].as_f64().unwrap()));

    // Answering twice is a conflict; the near driver is not offered the trip again.
    let (status, body) = server
        .post(
            &format!("/v1/offers/{offer_id}/decline"),
            &near.token,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (status, _) = server
        .post(
            &format!("/v1/offers/{far_offer}/decline"),
            &far.token,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(
        near_ws
            .try_next(Duration::from_millis(300))
            .await
            .is_none_or(|m| m["type"] != "offer")
    );
    let (_, trip) = server
        .get(
            &format!("/v1/trips/{}", trip["id"].as_str().unwrap()),
            &passenger.token,
        )
        .await;
    assert_eq!(trip["state"], "requested");
}

async fn an_unanswered_offer_lapses_and_moves_on(backend: Backend) {
    let server = TestServer::start_with(backend, |c| c.dispatch.offer_timeout_ms = 300).await;
    let passenger = server.passenger().await;
    let (near, mut near_ws) = server.online_driver(near_gangnam(100.0)).await;
    let (far, mut far_ws) = server.online_driver(near_gangnam(1_000.0)).await;

    let trip = server
        .request_trip(&passenger, gangnam(), city_hall())
        .await;
    let offer = near_ws.next_of("offer").await;
    let lapsed = offer["offer_id"].as_str().unwrap();
    let withdrawn = near_ws.next_of("offer_withdrawn").await;
    assert_eq!(
        withdrawn,
        json!({"type": "offer_withdrawn", "offer_id": lapsed, "reason": "expired"})
    );

    let (status, body) = server
        .post(
            &format!("/v1/offers/{lapsed}/accept"),
            &near.token,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["error"]["code"], "offer_expired");

    let offer = far_ws.next_of("offer").await;
    assert_eq!(offer["trip_id"], trip["id"]);
    let (status, body) = server.answer(&far, &offer, "accept").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["driver_id"], far.id.as_str());
}

async fn a_trip_nobody_accepts_expires(backend: Backend) {
    let server = TestServer::start_with(backend, |c| c.dispatch.dispatch_deadline_ms = 400).await;
    let passenger = server.passenger().await;
    let trip = server
        .request_trip(&passenger, gangnam(), city_hall())
        .await;
    let trip_id = trip["id"].as_str().unwrap();
    let mut stream = server.trip_ws(trip_id, &passenger.token, 1).await;
    let event = stream.next_of("trip_event").await;
    assert_eq!(
        (event["seq"].as_i64(), event["event"].as_str()),
        (Some(2), Some("expired"))
    );
    assert_eq!(event["trip"]["state"], "expired");
    // Expired is final; the passenger may request again.
    let (status, body) = server
        .post(
            &format!("/v1/trips/{trip_id}/cancel"),
            &passenger.token,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["error"]["code"], "invalid_transition");
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
    let trip_id = trip["id"].as_str().unwrap();
    let offer = driver_ws.next_of("offer").await;
    let offer_id = offer["offer_id"].as_str().unwrap();

    let (status, body) = server
        .post(
            &format!("/v1/trips/{trip_id}/cancel"),
            &passenger.token,
            json!({"reason": "found another way"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "cancelled");
    assert_eq!(body["seq"], 2);
    let withdrawn = driver_ws.next_of("offer_withdrawn").await;
    assert_eq!(withdrawn["offer_id"], offer_id);
    assert_eq!(withdrawn["reason"], "cancelled");
    let (status, body) = server
        .post(
            &format!("/v1/offers/{offer_id}/accept"),
            &driver.token,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");

    // Cancelling an accepted trip frees the driver for the next request.
    let trip = server
        .request_trip(&passenger, gangnam(), city_hall())
        .await;
    let offer = driver_ws.next_of("offer").await;
    let (status, _) = server.answer(&driver, &offer, "accept").await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = server
        .request(
            reqwest::Method::POST,
            &format!("/v1/trips/{}/cancel", trip["id"].as_str().unwrap()),
            Some(&passenger.token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "cancel without a body: {body}");
    let event = driver_ws.next_of("trip_event").await;
    assert_eq!(event["event"], "accepted");
    let event = driver_ws.next_of("trip_event").await;
    assert_eq!(event["event"], "cancelled");
    let other = server.passenger().await;
    let trip = server.request_trip(&other, gangnam(), city_hall()).await;
    assert_eq!(driver_ws.next_of("offer").await["trip_id"], trip["id"]);
}

async fn a_driver_cancel_before_pickup_redispatches_to_someone_else(backend: Backend) {
    let server = TestServer::start(backend).await;
    let passenger = server.passenger().await;
    let (first, mut first_ws) = server.online_driver(near_gangnam(100.0)).await;
    let (_second, mut second_ws) = server.online_driver(near_gangnam(1_500.0)).await;
    let trip = server
        .request_trip(&passenger, gangnam(), city_hall())
        .await;
    let trip_id = trip["id"].as_str().unwrap();

    let offer = first_ws.next_of("offer").await;
    let (status, _) = server.answer(&first, &offer, "accept").await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = server
        .post(
            &format!("/v1/trips/{trip_id}/arrive"),
            &first.token,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let mut first_stream = server.trip_ws(trip_id, &first.token, 3).await;
    let (status, body) = server
        .post(
            &format!("/v1/trips/{trip_id}/cancel"),
            &first.token,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "requested");
    assert_eq!(body["driver_id"], Value::Null);
    // The driver sees their own cancellation, and then the trip is none of their business.
    assert_eq!(
        first_stream.next_of("trip_event").await["event"],
        "driver_cancelled"
    );
    assert!(first_stream.closed_within(PATIENCE).await);

    let offer = second_ws.next_of("offer").await;
    assert_eq!(offer["trip_id"], trip_id);
    // The first driver no longer sees the trip, and is not offered it again.
    let (status, _) = server
        .get(&format!("/v1/trips/{trip_id}"), &first.token)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let events = server.events(trip_id, &passenger.token, 0).await;
    assert_eq!(
        names(&events),
        ["requested", "accepted", "arrived", "driver_cancelled"]
    );
    let (status, _) = server.answer(&_second, &offer, "decline").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    while let Some(message) = first_ws.try_next(Duration::from_millis(300)).await {
        assert_ne!(message["type"], "offer", "{message}");
    }
}

async fn an_offer_is_won_once(backend: Backend) {
    let server = TestServer::start(backend).await;
    let passenger = server.passenger().await;
    let (driver, mut driver_ws) = server.online_driver(near_gangnam(100.0)).await;
    server
        .request_trip(&passenger, gangnam(), city_hall())
        .await;
    let offer = driver_ws.next_of("offer").await;
    let path = format!("/v1/offers/{}/accept", offer["offer_id"].as_str().unwrap());
    let (a, b) = tokio::join!(
        server.post(&path, &driver.token, json!({})),
        server.post(&path, &driver.token, json!({}))
    );
    let mut statuses = [a.0, b.0];
    statuses.sort();
    assert_eq!(
        statuses,
        [StatusCode::OK, StatusCode::CONFLICT],
        "{a:?} {b:?}"
    );
    let (status, body) = server.post(&path, &driver.token, json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["error"]["code"], "offer_already_answered");
}

async fn an_operator_assigns_and_sees_the_fleet(backend: Backend) {
    let server = TestServer::start(backend).await;
    let passenger = server.passenger().await;
    let (near, mut near_ws) = server.online_driver(near_gangnam(100.0)).await;
    let (chosen, mut chosen_ws) = server.online_driver(near_gangnam(2_500.0)).await;
    let trip = server
        .request_trip(&passenger, gangnam(), city_hall())
        .await;
    let trip_id = trip["id"].as_str().unwrap();
    let offer = near_ws.next_of("offer").await;

    let (status, snapshot) = server.get("/v1/ops/snapshot", OPERATOR_TOKEN).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(snapshot["stats"]["drivers_online"], 2);
    assert_eq!(snapshot["stats"]["drivers_offered"], 1);
    assert_eq!(snapshot["stats"]["trips_requested"], 1);
    assert_eq!(snapshot["trips"][0]["id"], trip_id);

    let (status, body) = server
        .post(
            &format!("/v1/trips/{trip_id}/assign"),
            OPERATOR_TOKEN,
            json!({"driver_id": chosen.id}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["driver_id"], chosen.id.as_str());
    let withdrawn = near_ws.next_of("offer_withdrawn").await;
    assert_eq!(withdrawn["offer_id"], offer["offer_id"]);
    assert_eq!(withdrawn["reason"], "taken");
    assert_eq!(chosen_ws.next_of("trip_event").await["event"], "accepted");
    let (status, _) = server.answer(&near, &offer, "accept").await;
    assert_eq!(status, StatusCode::CONFLICT);

    // A busy driver cannot be assigned a second trip; an unknown one is 404.
    let other = server.passenger().await;
    let second = server.request_trip(&other, gangnam(), city_hall()).await;
    let path = format!("/v1/trips/{}/assign", second["id"].as_str().unwrap());
    let (status, body) = server
        .post(&path, OPERATOR_TOKEN, json!({"driver_id": chosen.id}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (status, _) = server
        .post(&path, OPERATOR_TOKEN, json!({"driver_id": "drv_nobody"}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = server
        .post(&path, &passenger.token, json!({"driver_id": near.id}))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

async fn one_active_trip_per_passenger_and_idempotent_retries(backend: Backend) {
    let server = TestServer::start(backend).await;
    let passenger = server.passenger().await;
    let body = json!({"pickup": gangnam(), "dropoff": city_hall()});
    let send = |key: &'static str, body: Value| {
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
    let first: Value = first.json().await.unwrap();
    let retry = send("k1", body.clone()).await.unwrap();
    assert_eq!(retry.status(), StatusCode::CREATED);
    let retry: Value = retry.json().await.unwrap();
    assert_eq!(retry["id"], first["id"]);

    let changed = send("k1", json!({"pickup": city_hall(), "dropoff": gangnam()}))
        .await
        .unwrap();
    assert_eq!(changed.status(), StatusCode::CONFLICT);
    let changed: Value = changed.json().await.unwrap();
    assert_eq!(changed["error"]["code"], "idempotency_key_reused");

    let (status, body) = server.post("/v1/trips", &passenger.token, body).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["error"]["code"], "active_trip_exists");
    let events = server
        .events(first["id"].as_str().unwrap(), &passenger.token, 0)
        .await;
    assert_eq!(seqs(&events), [1]);
}

async fn a_driver_that_goes_offline_gets_no_offers(backend: Backend) {
    let server = TestServer::start(backend).await;
    let passenger = server.passenger().await;
    let (_driver, mut ws) = server.online_driver(near_gangnam(100.0)).await;
    ws.send(json!({"type": "status", "status": "offline"}))
        .await;
    ws.sync().await;
    let trip = server
        .request_trip(&passenger, gangnam(), city_hall())
        .await;
    assert!(ws.try_next(Duration::from_millis(300)).await.is_none());
    ws.send(json!({"type": "status", "status": "available"}))
        .await;
    assert_eq!(ws.next_of("offer").await["trip_id"], trip["id"]);
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
    let online = |snapshot: &Value| {
        snapshot["drivers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["id"] == driver.id.as_str())
    };
    // Still listed right after the drop (mobile networks flap)...
    let (_, snapshot) = server.get("/v1/ops/snapshot", OPERATOR_TOKEN).await;
    assert!(online(&snapshot), "{snapshot}");
    // ...and gone once the grace period has passed without a ping.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (_, snapshot) = server.get("/v1/ops/snapshot", OPERATOR_TOKEN).await;
        if !online(&snapshot) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "driver never went offline"
        );
        tokio::task::yield_now().await;
    }
    // Reconnecting brings it back, dispatchable.
    let passenger = server.passenger().await;
    let mut ws = server.connect_driver(&driver, near_gangnam(100.0)).await;
    let trip = server
        .request_trip(&passenger, gangnam(), city_hall())
        .await;
    assert_eq!(ws.next_of("offer").await["trip_id"], trip["id"]);
}

on_both_stores!(
    happy_path_from_request_to_fare,
    a_declined_offer_goes_to_the_next_driver_and_never_back,
    an_unanswered_offer_lapses_and_moves_on,
    a_trip_nobody_accepts_expires,
    a_passenger_cancel_withdraws_the_open_offer,
    a_driver_cancel_before_pickup_redispatches_to_someone_else,
    an_offer_is_won_once,
    an_operator_assigns_and_sees_the_fleet,
    one_active_trip_per_passenger_and_idempotent_retries,
    a_driver_that_goes_offline_gets_no_offers,
    a_dropped_driver_stays_online_through_the_grace_period_only,
);
