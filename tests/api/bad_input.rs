//! Invariant 5 and ownership: bad input and other people's things get a clear error in
//! our format, change nothing, and the server keeps serving everyone else.

use std::time::Duration;

use futures_util::SinkExt;
use hail::{
    error::ErrorCode,
    protocol::{
        DriverMessage, ServerMessage,
        rest::{Health, Readiness},
    },
    trip::Trip,
};
use reqwest::{Method, StatusCode};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::common::*;

async fn malformed_and_out_of_range_trip_requests_change_nothing(backend: Backend) {
    let server = TestServer::start(backend).await;
    let passenger = server.passenger().await;
    use ErrorCode::{InvalidBody, MalformedJson};
    let cases: [(&str, ErrorCode); 10] = [
        ("{not json", MalformedJson),
        ("", MalformedJson),
        (
            r#"{"pickup": {"lat": 91, "lng": 127}, "dropoff": {"lat": 37.5, "lng": 127}}"#,
            InvalidBody,
        ),
        (
            r#"{"pickup": {"lat": 37.5, "lng": -180.01}, "dropoff": {"lat": 37.5, "lng": 127}}"#,
            InvalidBody,
        ),
        (
            r#"{"pickup": {"lat": "NaN", "lng": 127}, "dropoff": {"lat": 37.5, "lng": 127}}"#,
            InvalidBody,
        ),
        (
            r#"{"pickup": {"lat": NaN, "lng": 127}, "dropoff": {"lat": 37.5, "lng": 127}}"#,
            MalformedJson,
        ),
        (
            r#"{"pickup": {"lat": 1e999, "lng": 127}, "dropoff": {"lat": 37.5, "lng": 127}}"#,
            MalformedJson,
        ),
        (
            r#"{"pickup": {"lat": 37.5}, "dropoff": {"lat": 37.5, "lng": 127}}"#,
            InvalidBody,
        ),
        (r#"{"pickup": {"lat": 37.5, "lng": 127}}"#, InvalidBody),
        ("[1, 2, 3]", InvalidBody),
    ];
    for (body, code) in cases {
        let reply = server.post_raw("/v1/trips", &passenger.token, body).await;
        assert_eq!(reply.error(StatusCode::BAD_REQUEST), code, "{body}");
    }
    let reply = server
        .post_raw("/v1/trips", &passenger.token, "x".repeat(64 * 1024))
        .await;
    assert_eq!(
        reply.error(StatusCode::PAYLOAD_TOO_LARGE),
        ErrorCode::PayloadTooLarge
    );

    assert!(
        server.snapshot().await.trips.is_empty(),
        "nothing was created"
    );
    // And the passenger can still request normally.
    server
        .request_trip(&passenger, gangnam(), city_hall())
        .await;
}

async fn a_cancel_reason_is_checked_and_null_means_none(backend: Backend) {
    let server = TestServer::start(backend).await;
    let passenger = server.passenger().await;
    let trip = server
        .request_trip(&passenger, gangnam(), city_hall())
        .await;
    let path = format!("/v1/trips/{}/cancel", trip.id);
    for body in [
        r#"{"reason": ""}"#,
        r#"{"reason": " "}"#,
        r#"{"reason": "a\u0000b"}"#,
        r#"{"reason": 42}"#,
        "[]",
    ] {
        let reply = server.post_raw(&path, &passenger.token, body).await;
        assert_eq!(
            reply.error(StatusCode::BAD_REQUEST),
            ErrorCode::InvalidBody,
            "{body}"
        );
    }
    assert_eq!(
        server.trip(&trip.id, &passenger.token).await.seq,
        1,
        "unchanged"
    );
    // The body is optional, and JSON's `null` says the same as none.
    let cancelled: Trip = server.post_raw(&path, &passenger.token, "null").await.ok();
    assert_eq!(cancelled.state, hail::trip::TripState::Cancelled);
    let events = server.events(&trip.id, &passenger.token, 1).await;
    assert_eq!(events[0].reason, None);
}

async fn accounts_validate_names_and_roles(backend: Backend) {
    let server = TestServer::start(backend).await;
    let post_anonymous = |path: &'static str, body: serde_json::Value| {
        let server = &server;
        async move { server.call(Method::POST, path, None, Some(&body)).await }
    };
    // The length is counted as sent, spaces around it included, as /openapi.json says.
    for name in [
        json!("  "),
        json!("\u{3000}"),
        json!("x".repeat(101)),
        json!(format!(" {}", "x".repeat(100))),
        json!("a\u{7}b"),
        json!("a\u{85}b"),
    ] {
        let reply = post_anonymous("/v1/passengers", json!({ "name": name })).await;
        assert_eq!(
            reply.error(StatusCode::BAD_REQUEST),
            ErrorCode::InvalidBody,
            "{name}"
        );
    }
    let reply = post_anonymous("/v1/passengers", json!({})).await;
    assert_eq!(reply.error(StatusCode::BAD_REQUEST), ErrorCode::InvalidBody);

    let passenger = server.passenger().await;
    let driver_body = json!({"name": "Junho", "vehicle": {"plate": "12가3456"}});
    let reply = post_anonymous("/v1/drivers", driver_body.clone()).await;
    assert_eq!(
        reply.error(StatusCode::UNAUTHORIZED),
        ErrorCode::Unauthorized
    );
    let reply = server
        .post("/v1/drivers", &passenger.token, &driver_body)
        .await;
    assert_eq!(reply.error(StatusCode::FORBIDDEN), ErrorCode::Forbidden);
    let reply = server
        .post("/v1/drivers", "not-a-real-token", &driver_body)
        .await;
    assert_eq!(
        reply.error(StatusCode::UNAUTHORIZED),
        ErrorCode::Unauthorized
    );
    let reply = server
        .post(
            "/v1/drivers",
            OPERATOR_TOKEN,
            &json!({"name": "Junho", "vehicle": {}}),
        )
        .await;
    assert_eq!(reply.error(StatusCode::BAD_REQUEST), ErrorCode::InvalidBody);
    // The scheme is case-insensitive (RFC 9110); anything else is not a bearer token.
    for (header, status) in [
        (format!("BEARER {OPERATOR_TOKEN}"), StatusCode::OK),
        (format!("bearer  {OPERATOR_TOKEN}"), StatusCode::OK),
        (format!("Basic {OPERATOR_TOKEN}"), StatusCode::UNAUTHORIZED),
        (OPERATOR_TOKEN.to_string(), StatusCode::UNAUTHORIZED),
    ] {
        let response = server
            .http
            .get(format!("{}/v1/ops/cluster", server.base))
            .header("authorization", &header)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{header}");
    }

    // Drivers do not request trips; passengers do not drive.
    let driver = server.driver().await;
    let reply = server
        .post(
            "/v1/trips",
            &driver.token,
            &json!({"pickup": gangnam(), "dropoff": city_hall()}),
        )
        .await;
    assert_eq!(reply.error(StatusCode::FORBIDDEN), ErrorCode::Forbidden);
    let reply = server.get("/v1/ops/snapshot", &passenger.token).await;
    assert_eq!(reply.error(StatusCode::FORBIDDEN), ErrorCode::Forbidden);
    let reply = server
        .call(Method::GET, "/v1/ops/snapshot", None, None::<&()>)
        .await;
    assert_eq!(
        reply.error(StatusCode::UNAUTHORIZED),
        ErrorCode::Unauthorized
    );
    let reply = server
        .call(Method::GET, "/v1/nowhere", None, None::<&()>)
        .await;
    assert_eq!(reply.error(StatusCode::NOT_FOUND), ErrorCode::NotFound);
    let reply = server
        .call(
            Method::DELETE,
            "/v1/trips",
            Some(&passenger.token),
            None::<&()>,
        )
        .await;
    assert_eq!(
        reply.error(StatusCode::METHOD_NOT_ALLOWED),
        ErrorCode::MethodNotAllowed
    );
}

async fn another_users_trip_and_offer_are_not_found(backend: Backend) {
    let server = TestServer::start(backend).await;
    let owner = server.passenger().await;
    let stranger = server.passenger().await;
    let (driver, mut driver_ws) = server.online_driver(near_gangnam(100.0)).await;
    let (other_driver, _other_ws) = server.online_driver(near_gangnam(20_000.0)).await;
    let trip = server.request_trip(&owner, gangnam(), city_hall()).await;
    let offer = driver_ws.offer().await;

    // The same answer as for an id that does not exist.
    for id in [trip.id.as_str(), "trp_doesnotexist"] {
        for token in [&stranger.token, &other_driver.token] {
            for reply in [
                server.get(&format!("/v1/trips/{id}"), token).await,
                server.get(&format!("/v1/trips/{id}/events"), token).await,
                server
                    .post(&format!("/v1/trips/{id}/cancel"), token, &json!({}))
                    .await,
            ] {
                assert_eq!(reply.error(StatusCode::NOT_FOUND), ErrorCode::NotFound);
            }
        }
        // A driver holding an offer is not yet the trip's driver.
        let reply = server.get(&format!("/v1/trips/{id}"), &driver.token).await;
        assert_eq!(reply.error(StatusCode::NOT_FOUND), ErrorCode::NotFound);
    }
    for id in [offer.offer_id.as_str(), "ofr_doesnotexist"] {
        for answer in ["accept", "decline"] {
            let reply = server
                .post(
                    &format!("/v1/offers/{id}/{answer}"),
                    &other_driver.token,
                    &json!({}),
                )
                .await;
            assert_eq!(reply.error(StatusCode::NOT_FOUND), ErrorCode::NotFound);
        }
    }
    let reply = server
        .post(
            &format!("/v1/offers/{}/accept", offer.offer_id),
            &owner.token,
            &json!({}),
        )
        .await;
    assert_eq!(reply.error(StatusCode::FORBIDDEN), ErrorCode::Forbidden);
    let response = server
        .http
        .get(format!(
            "{}/v1/trips/{}/ws?token={}",
            server.base, trip.id, stranger.token
        ))
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);

    // The rightful driver still can; other drivers cannot move the trip along.
    server.answer(&driver, &offer, "accept").await.ok::<Trip>();
    for step in ["arrive", "start", "complete"] {
        let reply = server.step(&other_driver, &trip.id, step).await;
        assert_eq!(reply.error(StatusCode::NOT_FOUND), ErrorCode::NotFound);
        let reply = server
            .post(
                &format!("/v1/trips/{}/{step}", trip.id),
                &owner.token,
                &json!({}),
            )
            .await;
        assert_eq!(reply.error(StatusCode::FORBIDDEN), ErrorCode::Forbidden);
    }
    let reply = server.step(&driver, &trip.id, "start").await;
    assert_eq!(
        reply.error(StatusCode::CONFLICT),
        ErrorCode::InvalidTransition
    );
    let events = server.events(&trip.id, &owner.token, 0).await;
    assert_eq!(events.len(), 2, "only requested and accepted happened");
}

async fn bad_socket_messages_get_errors_and_the_socket_stays_open(backend: Backend) {
    let server = TestServer::start(backend).await;
    let passenger = server.passenger().await;
    let (_driver, mut ws) = server.online_driver(near_gangnam(100.0)).await;
    use ErrorCode::{InvalidCoordinates, InvalidMessage, MalformedJson};
    let bad: [(&str, ErrorCode); 7] = [
        ("{", MalformedJson),
        (r#"{"type": "teleport"}"#, InvalidMessage),
        (
            r#"{"type": "location", "lat": 95, "lng": 127}"#,
            InvalidCoordinates,
        ),
        (
            r#"{"type": "location", "lat": 37.5, "lng": 181}"#,
            InvalidCoordinates,
        ),
        (
            r#"{"type": "location", "lat": "NaN", "lng": 127}"#,
            InvalidMessage,
        ),
        (r#"{"type": "status", "status": "napping"}"#, InvalidMessage),
        (r#"{"type": "location", "lat": 37.5}"#, InvalidMessage),
    ];
    for (text, code) in bad {
        ws.send_text(text).await;
        assert_eq!(ws.error().await, code, "{text}");
    }
    ws.send_text(&format!(
        r#"{{"type":"location","lat":37.5,"lng":127,"pad":"{}"}}"#,
        "x".repeat(5_000)
    ))
    .await;
    assert_eq!(ws.error().await, ErrorCode::MessageTooLarge);
    ws.stream
        .send(Message::binary(vec![1, 2, 3]))
        .await
        .unwrap();
    assert_eq!(ws.error().await, ErrorCode::UnsupportedFrame);

    // None of that moved the driver: it is still offered the trip at its real position.
    let trip = server
        .request_trip(&passenger, gangnam(), city_hall())
        .await;
    let offer = ws.offer().await;
    assert_eq!(offer.trip_id, trip.id);
    assert!((90.0..=110.0).contains(&offer.pickup_distance_m));

    // A flood is cut to the message budget; the socket stays open.
    for _ in 0..60 {
        ws.send(&DriverMessage::location(near_gangnam(100.0))).await;
    }
    let mut limited = 0;
    while let Some(message) = ws.try_next(Duration::from_millis(300)).await {
        if let ServerMessage::Error {
            code: ErrorCode::RateLimited,
            ..
        } = message
        {
            limited += 1;
        }
    }
    assert!(limited > 0, "a flood of 60 messages is rate limited");

    // A frame past the hard limit closes that socket only.
    let (_other, mut other_ws) = server.online_driver(near_gangnam(5_000.0)).await;
    other_ws.send_text(&"x".repeat(64 * 1024)).await;
    assert!(other_ws.closed_within(PATIENCE).await);
    server.trip(&trip.id, &passenger.token).await;
    ws.sync().await;
}

async fn sockets_check_tokens_and_roles_before_upgrading(backend: Backend) {
    let server = TestServer::start(backend).await;
    let passenger = server.passenger().await;
    let url = |token: &str| format!("{}/v1/driver/ws?token={token}", server.ws_base());
    for token in ["", "wrong", passenger.token.as_str()] {
        let error = tokio_tungstenite::connect_async(url(token))
            .await
            .expect_err("refused");
        let tokio_tungstenite::tungstenite::Error::Http(response) = error else {
            panic!("{error:?}")
        };
        let expected = if token == passenger.token { 403 } else { 401 };
        assert_eq!(response.status().as_u16(), expected);
    }
    let trip = server
        .request_trip(&passenger, gangnam(), city_hall())
        .await;
    let bad_after = format!(
        "{}/v1/trips/{}/ws?after=-1&token={}",
        server.ws_base(),
        trip.id,
        passenger.token
    );
    let error = tokio_tungstenite::connect_async(bad_after)
        .await
        .expect_err("refused");
    let tokio_tungstenite::tungstenite::Error::Http(response) = error else {
        panic!()
    };
    assert_eq!(response.status().as_u16(), 400);
    let reply = server
        .get(
            &format!("/v1/trips/{}/events?after=abc", trip.id),
            &passenger.token,
        )
        .await;
    assert_eq!(
        reply.error(StatusCode::BAD_REQUEST),
        ErrorCode::InvalidAfter
    );
    // Handshakes that cannot be taken are answered in our error format too.
    let driver = server.driver().await;
    let plain = server.get("/v1/driver/ws", &driver.token).await;
    assert_eq!(
        plain.error(StatusCode::BAD_REQUEST),
        ErrorCode::InvalidUpgrade
    );
    let old_version = server
        .http
        .get(format!("{}/v1/driver/ws", server.base))
        .bearer_auth(&driver.token)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "8")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .unwrap();
    assert_eq!(old_version.status(), StatusCode::UPGRADE_REQUIRED);
    assert_eq!(old_version.headers()["sec-websocket-version"], "13");
    let body: hail::protocol::rest::ErrorBody = old_version.json().await.unwrap();
    assert_eq!(body.error.code, ErrorCode::UpgradeRequired);
    // No version at all, or a key that is not 16 bytes in base64, is no handshake (RFC
    // 6455 §4.2.1): 400, as /openapi.json states.
    let handshake = [
        ("connection", "Upgrade"),
        ("upgrade", "websocket"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    let broken = [
        ("sec-websocket-version", None),
        ("sec-websocket-key", Some("dGhlIHNhbXBsZSBub25jZQ")),
        ("sec-websocket-key", Some("not a key")),
    ];
    for (name, value) in broken {
        let mut request = server
            .http
            .get(format!("{}/v1/driver/ws", server.base))
            .bearer_auth(&driver.token);
        for (header, good) in handshake {
            match (header == name, value) {
                (false, _) => request = request.header(header, good),
                (true, Some(value)) => request = request.header(header, value),
                (true, None) => {}
            }
        }
        let response = request.send().await.unwrap();
        assert_eq!(
            response.status(),
            StatusCode::BAD_REQUEST,
            "{name}: {value:?}"
        );
        let body: hail::protocol::rest::ErrorBody = response.json().await.unwrap();
        assert_eq!(body.error.code, ErrorCode::InvalidUpgrade);
    }
    // Still serving.
    let mut stream = server.trip_ws(&trip.id, &passenger.token, 0).await;
    assert_eq!(stream.event().await.seq, 1);
    assert!(!stream.closed_within(Duration::from_millis(100)).await);
}

async fn service_endpoints_answer(backend: Backend) {
    let server = TestServer::start(backend).await;
    let health: Health = server
        .call(Method::GET, "/healthz", None, None::<&()>)
        .await
        .ok();
    assert_eq!(health.status, "ok");
    let ready: Readiness = server
        .call(Method::GET, "/readyz", None, None::<&()>)
        .await
        .ok();
    assert_eq!(ready.store, hail::protocol::rest::DependencyState::Ok);
    assert_eq!(
        ready.bus,
        hail::protocol::rest::DependencyState::NotConfigured
    );
    let doc: serde_json::Value = server
        .call(Method::GET, "/openapi.json", None, None::<&()>)
        .await
        .ok();
    for path in [
        "/v1/passengers",
        "/v1/trips",
        "/v1/trips/{id}/events",
        "/v1/offers/{id}/accept",
        "/v1/ops/cluster",
        "/v1/driver/ws",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} documented");
    }
    let page = server.call(Method::GET, "/", None, None::<&()>).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("hail"));

    // Some traffic, then the counters show it.
    let passenger = server.passenger().await;
    let (_driver, mut ws) = server.online_driver(near_gangnam(100.0)).await;
    server
        .request_trip(&passenger, gangnam(), city_hall())
        .await;
    ws.offer().await;
    let text = server.metrics().await;
    for line in [
        "hail_location_pings_total 1",
        r#"hail_offers_total{outcome="made"} 1"#,
        r#"hail_trip_transitions_total{event="requested"} 1"#,
        "hail_request_to_offer_seconds_count 1",
        "\nhail_dispatch_leader 1\n",
    ] {
        assert!(text.contains(line), "{line} in {text}");
    }
}

crate::on_both_stores!(
    malformed_and_out_of_range_trip_requests_change_nothing,
    a_cancel_reason_is_checked_and_null_means_none,
    accounts_validate_names_and_roles,
    another_users_trip_and_offer_are_not_found,
    bad_socket_messages_get_errors_and_the_socket_stays_open,
    sockets_check_tokens_and_roles_before_upgrading,
    service_endpoints_answer,
);
