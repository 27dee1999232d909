//! Invariant 4: a stream resumed with `after=N` yields every event with seq > N exactly
//! once, in order — from the store for the past, live for the rest.

use hail::{protocol::ServerMessage, trip::Trip};

use crate::common::*;

async fn resumed_streams_are_gapless_and_exactly_once(backend: Backend) {
    let server = TestServer::start(backend).await;
    let passenger = server.passenger().await;
    let (driver, mut driver_ws) = server.online_driver(near_gangnam(100.0)).await;
    let trip = server
        .request_trip(&passenger, gangnam(), city_hall())
        .await;

    // One subscriber from the start, watching live.
    let mut live = server.trip_ws(&trip.id, &passenger.token, 0).await;
    let offer = driver_ws.offer().await;
    server.answer(&driver, &offer, "accept").await.ok::<Trip>();
    server.step(&driver, &trip.id, "arrive").await.ok::<Trip>();

    // A second one resumes mid-way, while the trip keeps moving.
    let mut resumed = server.trip_ws(&trip.id, &passenger.token, 2).await;
    server.step(&driver, &trip.id, "start").await.ok::<Trip>();
    server
        .step(&driver, &trip.id, "complete")
        .await
        .ok::<Trip>();

    let mut seen = Vec::new();
    while seen.len() < 5 {
        seen.push(live.event().await.seq);
    }
    assert_eq!(seen, [1, 2, 3, 4, 5]);
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let event = resumed.event().await;
        assert_eq!(event.trip.seq, event.seq);
        seen.push(event.seq);
    }
    assert_eq!(seen, [3, 4, 5]);
    // Nothing more: no duplicate arrives later.
    while let Some(message) = resumed
        .try_next(std::time::Duration::from_millis(200))
        .await
    {
        assert!(
            !matches!(message, ServerMessage::TripEvent(_)),
            "{message:?}"
        );
    }

    // The driver and an operator may follow the same stream; REST agrees.
    let mut as_driver = server.trip_ws(&trip.id, &driver.token, 4).await;
    assert_eq!(as_driver.event().await.seq, 5);
    let mut as_operator = server.trip_ws(&trip.id, OPERATOR_TOKEN, 0).await;
    assert_eq!(as_operator.event().await.seq, 1);
    let events = server.events(&trip.id, &passenger.token, 3).await;
    let seqs: Vec<i64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [4, 5]);
    assert!(
        server
            .events(&trip.id, &passenger.token, 5)
            .await
            .is_empty()
    );
    assert!(
        server
            .events(&trip.id, &passenger.token, 99)
            .await
            .is_empty()
    );
}

async fn shutdown_closes_sockets_and_stops_serving(backend: Backend) {
    let mut server = TestServer::start(backend).await;
    let passenger = server.passenger().await;
    let (_driver, mut driver_ws) = server.online_driver(near_gangnam(100.0)).await;
    let trip = server
        .request_trip(&passenger, gangnam(), city_hall())
        .await;
    let mut stream = server.trip_ws(&trip.id, &passenger.token, 1).await;
    let base = server.base.clone();
    server.stop().await;
    assert!(driver_ws.closed_within(PATIENCE).await);
    assert!(stream.closed_within(PATIENCE).await);
    assert!(reqwest::get(format!("{base}/healthz")).await.is_err());
}

crate::on_both_stores!(
    resumed_streams_are_gapless_and_exactly_once,
    shutdown_closes_sockets_and_stops_serving,
);
