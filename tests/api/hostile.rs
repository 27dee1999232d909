//! Hostile clients (issue 10): slow requests, connection and socket hogging, floods of
//! frames, oversize frames — each limited, none able to starve anyone else.

use std::time::Duration;

use futures_util::SinkExt;
use hail::{error::ErrorCode, protocol::ServerMessage};
use reqwest::StatusCode;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_tungstenite::tungstenite::{Message, protocol::frame::coding::CloseCode};

use crate::common::*;

fn address(server: &TestServer) -> String {
    server.base.trim_start_matches("http://").to_string()
}

/// True if the server closes `stream` within `wait` (reads end or fail).
async fn closed_by_server(stream: &mut TcpStream, wait: Duration) -> bool {
    let mut buffer = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

/// Slowloris: a request whose header never ends is cut off at the header-read timeout;
/// so is a kept-alive connection that says nothing more. The cap on plain connections
/// closes the ones beyond it at once — and serving goes on for everyone else.
async fn slow_and_idle_connections_are_cut_off(backend: Backend) {
    let server = TestServer::start_with(backend, |c| {
        c.limits.header_read_timeout_ms = 300;
        c.limits.max_connections = 3;
    })
    .await;
    let mut half = TcpStream::connect(address(&server)).await.unwrap();
    half.write_all(b"GET /healthz HTTP/1.1\r\nHost: hail\r\nX-Slow: ")
        .await
        .unwrap();
    assert!(
        closed_by_server(&mut half, PATIENCE).await,
        "an unfinished header is cut off"
    );

    let mut idle = TcpStream::connect(address(&server)).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: hail\r\n\r\n")
        .await
        .unwrap();
    assert!(
        closed_by_server(&mut idle, PATIENCE).await,
        "an idle kept-alive connection is cut off"
    );

    // Three held connections fill the cap; a fourth is closed before it is read.
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut stream = TcpStream::connect(address(&server)).await.unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: hail\r\n")
            .await
            .unwrap();
        held.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut over = TcpStream::connect(address(&server)).await.unwrap();
    assert!(
        closed_by_server(&mut over, Duration::from_millis(250)).await,
        "over the cap"
    );
    drop(held);
    // Once they are cut off, the server serves again.
    eventually("the server answers", || async {
        let reply = reqwest::get(format!("{}/healthz", server.base))
            .await
            .ok()?;
        (reply.status() == StatusCode::OK).then_some(())
    })
    .await;
}

/// One account may hold a few trip streams; the budget of trip streams as a whole can
/// fill up without keeping a driver's socket or an operator's stream out.
async fn sockets_are_budgeted_per_account_and_per_role(backend: Backend) {
    let server = TestServer::start_with(backend, |c| {
        c.limits.max_streams_per_account = 2;
        c.limits.max_trip_streams = 3;
    })
    .await;
    let passenger = server.passenger().await;
    let trip = server
        .request_trip(&passenger, gangnam(), city_hall())
        .await;
    let url = |token: &str| format!("{}/v1/trips/{}/ws?token={token}", server.ws_base(), trip.id);
    let first = tokio_tungstenite::connect_async(url(&passenger.token))
        .await
        .unwrap();
    let _second = tokio_tungstenite::connect_async(url(&passenger.token))
        .await
        .unwrap();
    let error = tokio_tungstenite::connect_async(url(&passenger.token))
        .await
        .expect_err("a third stream of the same account is refused");
    let tokio_tungstenite::tungstenite::Error::Http(response) = error else {
        panic!("{error:?}")
    };
    assert_eq!(response.status().as_u16(), 429);
    let body: hail::protocol::rest::ErrorBody =
        serde_json::from_slice(response.body().as_deref().unwrap()).unwrap();
    assert_eq!(body.error.code, ErrorCode::TooManySockets);
    // Closing one frees its place.
    drop(first);
    eventually("the account's place is free again", || async {
        tokio_tungstenite::connect_async(url(&passenger.token))
            .await
            .ok()
            .map(|_| ())
    })
    .await;
    // The trip-stream budget is spent now (an operator's stream counts in it too) …
    let _operator = tokio_tungstenite::connect_async(url(OPERATOR_TOKEN)).await;
    let other = server.passenger().await;
    let refused = tokio_tungstenite::connect_async(url(&other.token)).await;
    assert!(refused.is_err(), "the trip-stream budget is spent");
    // … and drivers and operators still get in.
    let (_driver, mut ws) = server.online_driver(near_gangnam(100.0)).await;
    ws.sync().await;
    let ops = tokio_tungstenite::connect_async(format!(
        "{}/v1/ops/ws?token={OPERATOR_TOKEN}",
        server.ws_base()
    ))
    .await;
    assert!(ops.is_ok(), "the operator stream has a budget of its own");
}

/// Every frame counts, binary and pings too: a flood is throttled, then closed with 1008;
/// a frame over the limit gets a 1009 close frame.
async fn floods_and_oversize_frames_get_close_frames(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (_driver, mut ws) = server.online_driver(near_gangnam(100.0)).await;
    for _ in 0..400 {
        if ws.stream.send(Message::Ping(vec![1].into())).await.is_err() {
            break;
        }
    }
    assert_eq!(
        ws.close_code_within(PATIENCE).await,
        Some(u16::from(CloseCode::Policy)),
        "a flood of pings ends with 1008"
    );

    let (_other, mut other) = server.online_driver(near_gangnam(200.0)).await;
    other.send_text(&"x".repeat(64 * 1024)).await;
    assert_eq!(
        other.close_code_within(PATIENCE).await,
        Some(u16::from(CloseCode::Size))
    );

    // Trip streams expect nothing from the client: a flood there closes the same way.
    let passenger = server.passenger().await;
    let trip = server
        .request_trip(&passenger, gangnam(), city_hall())
        .await;
    let mut stream = server.trip_ws(&trip.id, &passenger.token, 0).await;
    for _ in 0..400 {
        if stream
            .stream
            .send(Message::binary(vec![0u8; 8]))
            .await
            .is_err()
        {
            break;
        }
    }
    assert_eq!(
        stream.close_code_within(PATIENCE).await,
        Some(u16::from(CloseCode::Policy))
    );
    // Everyone else is served as before.
    let (_third, mut third) = server.online_driver(near_gangnam(300.0)).await;
    third.sync().await;
    let reply = server
        .get(&format!("/v1/trips/{}", trip.id), &passenger.token)
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(matches!(
        third.try_next(Duration::from_millis(50)).await,
        None | Some(ServerMessage::Offer(_))
    ));
}

/// `HAIL_SOCKET_MESSAGES_PER_S` lifts the frame budget (for an ingest benchmark): 300
/// pings at once — a flood that the default budget of 10 a second (bursts of 20) answers
/// with `rate_limited` and then a 1008 — all go through, and the socket stays open.
async fn a_lifted_frame_budget_takes_a_burst_the_default_refuses(backend: Backend) {
    let server = TestServer::start_with(backend, |config| {
        config.limits.socket_messages_per_s = 200;
    })
    .await;
    let (driver, mut ws) = server.online_driver(near_gangnam(100.0)).await;
    for i in 0..300 {
        let at = near_gangnam(100.0 + f64::from(i));
        ws.send_text(&format!(
            r#"{{"type":"location","lat":{},"lng":{}}}"#,
            at.lat(),
            at.lng()
        ))
        .await;
    }
    ws.sync().await;
    while let Some(message) = ws.try_next(Duration::from_millis(50)).await {
        assert!(
            !matches!(
                message,
                ServerMessage::Error {
                    code: ErrorCode::RateLimited,
                    ..
                }
            ),
            "{message:?}"
        );
    }
    // The last ping is where the fleet has the driver.
    let card: hail::protocol::operators::DriverCard = server
        .get(&format!("/v1/ops/drivers/{}", driver.id), OPERATOR_TOKEN)
        .await
        .ok();
    let last = near_gangnam(399.0);
    let position = card
        .online
        .and_then(|view| view.position)
        .expect("a position");
    assert!(position.distance_m(&last) < 0.01, "{position:?}");
}

/// `/metrics` can live on an address of its own, and then only there.
async fn metrics_can_have_a_listener_of_their_own(backend: Backend) {
    let port = free_port();
    let server = TestServer::start_with(backend, |c| {
        c.limits.metrics_listen = Some(format!("127.0.0.1:{port}").parse().unwrap());
    })
    .await;
    let public = server
        .call(reqwest::Method::GET, "/metrics", None, None::<&()>)
        .await;
    assert_eq!(public.error(StatusCode::NOT_FOUND), ErrorCode::NotFound);
    let private = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap();
    assert_eq!(private.status(), StatusCode::OK);
    assert!(
        private
            .text()
            .await
            .unwrap()
            .contains("hail_location_pings_total")
    );
}

/// Limits per client address, per passenger and per account answer 429 `rate_limited`
/// with `Retry-After`, and change nothing; other clients are not affected.
async fn scripts_meet_the_rate_limits(backend: Backend) {
    let server = TestServer::start_with(backend, |c| {
        c.limits.signup_limit_per_min = 3;
        c.limits.trip_request_limit_per_min = 2;
    })
    .await;
    let mut passengers = Vec::new();
    for _ in 0..3 {
        passengers.push(server.passenger().await);
    }
    let signup = hail::protocol::rest::PassengerSignup { name: "Bot".into() };
    let response = server
        .http
        .post(format!("{}/v1/passengers", server.base))
        .json(&signup)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=20).contains(&retry_after), "{retry_after}");
    let body: hail::protocol::rest::ErrorBody = response.json().await.unwrap();
    assert_eq!(body.error.code, ErrorCode::RateLimited);

    // A passenger requesting and cancelling in a loop is stopped at the limit.
    let passenger = &passengers[0];
    let trip = server.request_trip(passenger, gangnam(), city_hall()).await;
    let cancel = format!("/v1/trips/{}/cancel", trip.id);
    server
        .post(&cancel, &passenger.token, &serde_json::json!({}))
        .await
        .ok::<hail::trip::Trip>();
    let third = server
        .post(
            "/v1/trips",
            &passenger.token,
            &serde_json::json!({"pickup": gangnam(), "dropoff": city_hall()}),
        )
        .await;
    assert_eq!(
        third.error(StatusCode::TOO_MANY_REQUESTS),
        ErrorCode::RateLimited
    );
    assert_eq!(
        server.snapshot().await.trips.len(),
        1,
        "the refused request changed nothing"
    );
    // Another passenger is not held back by the first one's budget.
    server
        .request_trip(&passengers[1], gangnam(), city_hall())
        .await;
}

crate::on_both_stores!(
    scripts_meet_the_rate_limits,
    slow_and_idle_connections_are_cut_off,
    sockets_are_budgeted_per_account_and_per_role,
    floods_and_oversize_frames_get_close_frames,
    a_lifted_frame_budget_takes_a_burst_the_default_refuses,
    metrics_can_have_a_listener_of_their_own,
);
