//! The operator stream: a snapshot, then deltas — moved drivers, trip events, the offer
//! audit log and figures.

mod common;

use common::*;
use serde_json::Value;

async fn next_of_type(ws: &mut Ws, kind: &str) -> Value {
    ws.next_of(kind).await
}

async fn operator_stream_shows_dispatch_live(backend: Backend) {
    let server = TestServer::start(backend).await;
    let passenger = server.passenger().await;
    let (early, _early_ws) = server.online_driver(near_gangnam(300.0)).await;

    let mut ops = Ws::connect(&format!(
        "{}/v1/ops/ws?token={OPERATOR_TOKEN}",
        server.ws_base()
    ))
    .await;
    let snapshot = next_of_type(&mut ops, "snapshot").await;
    assert_eq!(snapshot["stats"]["drivers_online"], 1);
    assert_eq!(snapshot["drivers"][0]["id"], early.id.as_str());
    assert_eq!(snapshot["drivers"][0]["state"], "available");
    assert!(snapshot["figures"]["trend"].is_array());

    // A driver coming online shows up in the next movement batch, compactly.
    let (late, mut late_ws) = server.online_driver(near_gangnam(100.0)).await;
    let batch = loop {
        let batch = next_of_type(&mut ops, "drivers").await;
        if batch["drivers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d[0] == late.id.as_str())
        {
            break batch;
        }
    };
    let row = batch["drivers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d[0] == late.id.as_str())
        .unwrap()
        .clone();
    assert_eq!(row[1], "available");
    assert!((row[2].as_f64().unwrap() - (37.4979 + 100.0 / 111_195.0)).abs() < 1e-4);

    // A request: its event, then the audit line saying who was offered it and why.
    let trip = server
        .request_trip(&passenger, gangnam(), city_hall())
        .await;
    let event = next_of_type(&mut ops, "trip_event").await;
    assert_eq!(
        (event["trip_id"].as_str(), event["event"].as_str()),
        (trip["id"].as_str(), Some("requested"))
    );
    let offer = next_of_type(&mut ops, "offer").await;
    assert_eq!(offer["trip_id"], trip["id"]);
    assert_eq!(offer["driver_id"], late.id.as_str(), "the nearer driver");
    assert_eq!(offer["outcome"], "made");
    assert_eq!(offer["rank"], 1);
    assert_eq!(offer["candidates"], 2);
    assert_eq!(offer["radius_m"], 3_000.0);
    assert!((offer["pickup_distance_m"].as_f64().unwrap() - 100.0).abs() <= 1.0);

    let offered = late_ws.next_of("offer").await;
    let (status, _) = server.answer(&late, &offered, "accept").await;
    assert!(status.is_success());
    let accepted = next_of_type(&mut ops, "offer").await;
    assert_eq!(
        (accepted["outcome"].as_str(), accepted["offer_id"].as_str()),
        (Some("accepted"), offered["offer_id"].as_str())
    );
    let figures = next_of_type(&mut ops, "figures").await;
    assert_eq!(figures["figures"]["requested"], 1);
    assert_eq!(figures["figures"]["acceptance_rate"], 1.0);
    assert_eq!(figures["stats"]["drivers_busy"], 1);
}

async fn only_operators_may_watch(backend: Backend) {
    let server = TestServer::start(backend).await;
    let passenger = server.passenger().await;
    for (token, status) in [(passenger.token.as_str(), 403), ("nope", 401)] {
        let url = format!("{}/v1/ops/ws?token={token}", server.ws_base());
        let error = tokio_tungstenite::connect_async(url)
            .await
            .expect_err("refused");
        let tokio_tungstenite::tungstenite::Error::Http(response) = error else {
            panic!("{error:?}")
        };
        assert_eq!(response.status().as_u16(), status);
    }
}

on_both_stores!(
    operator_stream_shows_dispatch_live,
    only_operators_may_watch
);
