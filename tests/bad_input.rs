//! Invariant 5 and ownership: bad input and other people's things get a clear error in
//! our format, change nothing, and the server keeps serving everyone else.

mod common;

use std::time::Duration;

use common::*;
use futures_util::SinkExt;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

fn assert_error(status: StatusCode, body: &Value, expected_status: StatusCode, code: &str) {
    assert_eq!(status, expected_status, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

async fn raw_post(
    server: &TestServer,
    path: &str,
    token: &str,
    body: impl Into<reqwest::Body>,
) -> (StatusCode, Value) {
    let response = server
        .http
        .post(format!("{}{path}", server.base))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn malformed_and_out_of_range_trip_requests_change_nothing(backend: Backend) {
    let server = TestServer::start(backend).await;
    let passenger = server.passenger().await;
    let cases: Vec<(String, &str)> = vec![
        ("{not json".into(), "malformed_json"),
        ("".into(), "malformed_json"),
        (
            r#"{"pickup": {"lat": 91, "lng": 127}, "dropoff": {"lat": 37.5, "lng": 127}}"#.into(),
            "invalid_body",
        ),
        (
            r#"{"pickup": {"lat": 37.5, "lng": -180.01}, "dropoff": {"lat": 37.5, "lng": 127}}"#
                .into(),
            "invalid_body",
        ),
        (
            r#"{"pickup": {"lat": "NaN", "lng": 127}, "dropoff": {"lat": 37.5, "lng": 127}}"#
                .into(),
            "invalid_body",
        ),
        (
            r#"{"pickup": {"lat": NaN, "lng": 127}, "dropoff": {"lat": 37.5, "lng": 127}}"#.into(),
            "malformed_json",
        ),
        (
            r#"{"pickup": {"lat": 1e999, "lng": 127}, "dropoff": {"lat": 37.5, "lng": 127}}"#
                .into(),
            "malformed_json",
        ),
        (
            r#"{"pickup": {"lat": 37.5}, "dropoff": {"lat": 37.5, "lng": 127}}"#.into(),
            "invalid_body",
        ),
        (
            r#"{"pickup": {"lat": 37.5, "lng": 127}}"#.into(),
            "invalid_body",
        ),
        ("[1, 2, 3]".into(), "invalid_body"),
    ];
    for (body, code) in cases {
        let (status, answer) = raw_post(&server, "/v1/trips", &passenger.token, body.clone()).await;
        assert_eq!(answer["error"]["code"], code, "{body} → {answer}");
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    }
    let (status, answer) = raw_post(
        &server,
        "/v1/trips",
        &passenger.token,
        "x".repeat(64 * 1024),
    )
    .await;
    assert_error(
        status,
        &answer,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    );

    let (_, snapshot) = server.get("/v1/ops/snapshot", OPERATOR_TOKEN).await;
    assert_eq!(snapshot["trips"], json!([]), "nothing was created");
    // And the passenger can still request normally.
    server
        .request_trip(&passenger, gangnam(), city_hall())
        .await;
}

async fn accounts_validate_names_and_roles(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (status, body) = server
        .request(
            Method::POST,
            "/v1/passengers",
            None,
            Some(json!({"name": "  "})),
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_body");
    let (status, body) = server
        .request(
            Method::POST,
            "/v1/passengers",
            None,
            Some(json!({"name": "x".repeat(101)})),
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_body");
    let (status, body) = server
        .request(Method::POST, "/v1/passengers", None, Some(json!({})))
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_body");

    let passenger = server.passenger().await;
    let driver_body = json!({"name": "Junho", "vehicle": {"plate": "12가3456"}});
    let (status, body) = server
        .request(Method::POST, "/v1/drivers", None, Some(driver_body.clone()))
        .await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthorized");
    let (status, body) = server
        .post("/v1/drivers", &passenger.token, driver_body.clone())
        .await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "forbidden");
    let (status, body) = server
        .post("/v1/drivers", "not-a-real-token", driver_body)
        .await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthorized");
    let (status, body) = server
        .post(
            "/v1/drivers",
            OPERATOR_TOKEN,
            json!({"name": "Junho", "vehicle": {}}),
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_body");

    // Drivers do not request trips; passengers do not drive.
    let driver = server.driver().await;
    let (status, body) = server
        .post(
            "/v1/trips",
            &driver.token,
            json!({"pickup": gangnam(), "dropoff": city_hall()}),
        )
        .await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "forbidden");
    let (status, body) = server.get("/v1/ops/snapshot", &passenger.token).await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "forbidden");
    let (status, body) = server
        .request(Method::GET, "/v1/ops/snapshot", None, None)
        .await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthorized");
    let (status, body) = server.request(Method::GET, "/v1/nowhere", None, None).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    let (status, body) = server
        .request(Method::DELETE, "/v1/trips", Some(&passenger.token), None)
        .await;
    assert_error(
        status,
        &body,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    );
}

async fn another_users_trip_and_offer_are_not_found(backend: Backend) {
    let server = TestServer::start(backend).await;
    let owner = server.passenger().await;
    let stranger = server.passenger().await;
    let (driver, mut driver_ws) = server.online_driver(near_gangnam(100.0)).await;
    let (other_driver, _other_ws) = server.online_driver(near_gangnam(20_000.0)).await;
    let trip = server.request_trip(&owner, gangnam(), city_hall()).await;
    let trip_id = trip["id"].as_str().unwrap();
    let offer = driver_ws.next_of("offer").await;
    let offer_id = offer["offer_id"].as_str().unwrap();

    // The same answer as for an id that does not exist.
    for id in [trip_id, "trp_doesnotexist"] {
        for token in [&stranger.token, &other_driver.token] {
            let (status, body) = server.get(&format!("/v1/trips/{id}"), token).await;
            assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
            let (status, body) = server.get(&format!("/v1/trips/{id}/events"), token).await;
            assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
            let (status, body) = server
                .post(&format!("/v1/trips/{id}/cancel"), token, json!({}))
                .await;
            assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
        }
        // A driver holding an offer is not yet the trip's driver.
        let (status, body) = server.get(&format!("/v1/trips/{id}"), &driver.token).await;
        assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    }
    for id in [offer_id, "ofr_doesnotexist"] {
        let (status, body) = server
            .post(
                &format!("/v1/offers/{id}/accept"),
                &other_driver.token,
                json!({}),
            )
            .await;
        assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
        let (status, body) = server
            .post(
                &format!("/v1/offers/{id}/decline"),
                &other_driver.token,
                json!({}),
            )
            .await;
        assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    }
    let (status, body) = server
        .post(
            &format!("/v1/offers/{offer_id}/accept"),
            &owner.token,
            json!({}),
        )
        .await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "forbidden");
    let response = server
        .http
        .get(format!(
            "{}/v1/trips/{trip_id}/ws?token={}",
            server.base, stranger.token
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
    let (status, _) = server
        .post(
            &format!("/v1/offers/{offer_id}/accept"),
            &driver.token,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    for step in ["arrive", "start", "complete"] {
        let (status, body) = server
            .post(
                &format!("/v1/trips/{trip_id}/{step}"),
                &other_driver.token,
                json!({}),
            )
            .await;
        assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
        let (status, body) = server
            .post(
                &format!("/v1/trips/{trip_id}/{step}"),
                &owner.token,
                json!({}),
            )
            .await;
        assert_error(status, &body, StatusCode::FORBIDDEN, "forbidden");
    }
    let (status, body) = server
        .post(
            &format!("/v1/trips/{trip_id}/start"),
            &driver.token,
            json!({}),
        )
        .await;
    assert_error(status, &body, StatusCode::CONFLICT, "invalid_transition");
    let events = server.events(trip_id, &owner.token, 0).await;
    assert_eq!(events.len(), 2, "only requested and accepted happened");
}

async fn bad_socket_messages_get_errors_and_the_socket_stays_open(backend: Backend) {
    let server = TestServer::start(backend).await;
    let passenger = server.passenger().await;
    let (_driver, mut ws) = server.online_driver(near_gangnam(100.0)).await;
    let bad: [(&str, &str); 7] = [
        ("{", "malformed_json"),
        (r#"{"type": "teleport"}"#, "invalid_message"),
        (
            r#"{"type": "location", "lat": 95, "lng": 127}"#,
            "invalid_coordinates",
        ),
        (
            r#"{"type": "location", "lat": 37.5, "lng": 181}"#,
            "invalid_coordinates",
        ),
        (
            r#"{"type": "location", "lat": "NaN", "lng": 127}"#,
            "invalid_message",
        ),
        (
            r#"{"type": "status", "status": "napping"}"#,
            "invalid_message",
        ),
        (r#"{"type": "location", "lat": 37.5}"#, "invalid_message"),
    ];
    for (text, code) in bad {
        ws.send_text(text).await;
        let reply = ws.next().await;
        assert_eq!(reply["type"], "error", "{text}");
        assert_eq!(reply["code"], code, "{text} → {reply}");
    }
    ws.send_text(&format!(
        r#"{{"type":"location","lat":37.5,"lng":127,"pad":"{}"}}"#,
        "x".repeat(5_000)
    ))
    .await;
    assert_eq!(ws.next().await["code"], "message_too_large");
    ws.stream
        .send(Message::binary(vec![1, 2, 3]))
        .await
        .unwrap();
    assert_eq!(ws.next().await["code"], "unsupported_frame");

    // None of that moved the driver: it is still offered the trip at its real position.
    let trip = server
        .request_trip(&passenger, gangnam(), city_hall())
        .await;
    let offer = ws.next_of("offer").await;
    assert_eq!(offer["trip_id"], trip["id"]);
    assert!((90.0..=110.0).contains(&offer["pickup_distance_m"].as_f64().unwrap()));

    // A flood is cut to the message budget; the socket stays open.
    for _ in 0..60 {
        ws.send(json!({"type": "location", "lat": 37.4979 + 100.0 / 111_195.0, "lng": 127.0276}))
            .await;
    }
    let mut limited = 0;
    while let Some(message) = ws.try_next(Duration::from_millis(300)).await {
        if message["code"] == "rate_limited" {
            limited += 1;
        }
    }
    assert!(limited > 0, "a flood of 60 messages is rate limited");

    // A frame past the hard limit closes that socket only.
    let (_other, mut other_ws) = server.online_driver(near_gangnam(5_000.0)).await;
    other_ws.send_text(&"x".repeat(64 * 1024)).await;
    assert!(other_ws.closed_within(PATIENCE).await);
    let (status, _) = server
        .get(
            &format!("/v1/trips/{}", trip["id"].as_str().unwrap()),
            &passenger.token,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    ws.sync().await;
}

async fn sockets_check_tokens_and_roles_before_upgrading(backend: Backend) {
    let server = TestServer::start(backend).await;
    let passenger = server.passenger().await;
    let url = |token: &str| format!("{}/v1/driver/ws?token={token}", server.ws_base());
    for token in ["", "wrong", passenger.token.as_str()] {
        let result = tokio_tungstenite::connect_async(url(token)).await;
        let error = result.expect_err("refused");
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
        trip["id"].as_str().unwrap(),
        passenger.token
    );
    let error = tokio_tungstenite::connect_async(bad_after)
        .await
        .expect_err("refused");
    let tokio_tungstenite::tungstenite::Error::Http(response) = error else {
        panic!()
    };
    assert_eq!(response.status().as_u16(), 400);
    let (status, body) = server
        .get(
            &format!(
                "/v1/trips/{}/events?after=abc",
                trip["id"].as_str().unwrap()
            ),
            &passenger.token,
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_after");
    // Still serving.
    let mut stream = server
        .trip_ws(trip["id"].as_str().unwrap(), &passenger.token, 0)
        .await;
    assert_eq!(stream.next().await["seq"], 1);
    assert!(!stream.closed_within(Duration::from_millis(100)).await);
}

async fn service_endpoints_answer(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (status, body) = server.request(Method::GET, "/healthz", None, None).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("ok"))
    );
    let (status, body) = server.request(Method::GET, "/readyz", None, None).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("ready"))
    );
    let (status, doc) = server
        .request(Method::GET, "/openapi.json", None, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    for path in [
        "/v1/passengers",
        "/v1/trips",
        "/v1/trips/{id}/events",
        "/v1/offers/{id}/accept",
        "/v1/driver/ws",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} documented");
    }
    let (status, page) = server.request(Method::GET, "/", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.as_str().unwrap().contains("hail"));

    // Some traffic, then the counters show it.
    let passenger = server.passenger().await;
    let (_driver, mut ws) = server.online_driver(near_gangnam(100.0)).await;
    server
        .request_trip(&passenger, gangnam(), city_hall())
        .await;
    ws.next_of("offer").await;
    let text = server
        .http
        .get(format!("{}/metrics", server.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("hail_location_pings_total 1"), "{text}");
    assert!(
        text.contains(r#"hail_offers_total{outcome="made"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"hail_trip_transitions_total{event="requested"} 1"#),
        "{text}"
    );
    assert!(
        text.contains("hail_request_to_offer_seconds_count 1"),
        "{text}"
    );
}

on_both_stores!(
    malformed_and_out_of_range_trip_requests_change_nothing,
    accounts_validate_names_and_roles,
    another_users_trip_and_offer_are_not_found,
    bad_socket_messages_get_errors_and_the_socket_stays_open,
    sockets_check_tokens_and_roles_before_upgrading,
    service_endpoints_answer,
);
