//! Invariant 3: after `kill -9` and a restart every acknowledged change is there, and
//! dispatch picks up where it stopped — open offers included. The server runs as a real
//! child process.

use hail::{
    protocol::ServerMessage,
    trip::{Trip, TripState},
};

use crate::common::*;

async fn kill_9_loses_nothing_acknowledged_and_dispatch_resumes(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let database_url = fresh_database(backend, &dir).await;
    let mut node = HailProcess::start(0, &database_url, &[]).await;
    let before = node.client.clone();

    let rider = before.passenger().await;
    let waiting = before.passenger().await;
    let (driver, mut driver_ws) = before.online_driver(near_gangnam(100.0)).await;
    let riding = before.request_trip(&rider, gangnam(), city_hall()).await;
    let offer = driver_ws.offer().await;
    before.answer(&driver, &offer, "accept").await.ok::<Trip>();
    before
        .step(&driver, &riding.id, "arrive")
        .await
        .ok::<Trip>();

    // A second trip, offered to a second driver who has not answered when the node dies.
    let (late, mut late_ws) = before.online_driver(near_gangnam(500.0)).await;
    let open = before.request_trip(&waiting, gangnam(), city_hall()).await;
    let open_offer = late_ws.offer().await;
    assert_eq!(open_offer.trip_id, open.id);

    node.kill().await;
    drop((driver_ws, late_ws));

    let node = HailProcess::start(0, &database_url, &[]).await;
    let after = node.client.clone();
    // Every acknowledged change is there, with gapless seqs.
    let trip = after.trip(&riding.id, &rider.token).await;
    assert_eq!(trip.state, TripState::Arrived);
    assert_eq!(trip.driver_id.as_deref(), Some(driver.id.as_str()));
    let seqs: Vec<i64> = after
        .events(&riding.id, &rider.token, 0)
        .await
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(seqs, [1, 2, 3]);
    assert_eq!(
        after.trip(&open.id, &waiting.token).await.state,
        TripState::Requested
    );

    // Drivers re-ping: the busy one stays on its trip; the other finds its open offer —
    // made before the crash, adopted by the restarted node with its deadline — sent again.
    let mut driver_ws = after.connect_driver(&driver, near_gangnam(100.0)).await;
    let mut late_ws = after.connect_driver(&late, near_gangnam(500.0)).await;
    let resent = late_ws.offer().await;
    assert_eq!(resent.offer_id, open_offer.offer_id);
    let accepted: Trip = after.answer(&late, &resent, "accept").await.ok();
    assert_eq!(accepted.id, open.id);
    for step in ["start", "complete"] {
        after.step(&driver, &riding.id, step).await.ok::<Trip>();
    }
    while let Some(message) = driver_ws
        .try_next(std::time::Duration::from_millis(200))
        .await
    {
        assert!(!matches!(message, ServerMessage::Offer(_)), "{message:?}");
    }
    let trip = after.trip(&riding.id, &rider.token).await;
    assert_eq!(trip.state, TripState::Completed);
    assert!(trip.fare.unwrap().amount >= 4_800);
}

async fn sigterm_drains_and_exits_cleanly(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let database_url = fresh_database(backend, &dir).await;
    let mut node = HailProcess::start(0, &database_url, &[]).await;
    let passenger = node.passenger().await;
    let trip = node.request_trip(&passenger, gangnam(), city_hall()).await;
    let mut stream = node.trip_ws(&trip.id, &passenger.token, 1).await;
    let exit = node.terminate().await;
    assert!(
        stream.closed_within(PATIENCE).await,
        "sockets are closed on shutdown"
    );
    assert!(exit.success(), "{exit:?}");

    // Nothing acknowledged was lost across the clean restart either.
    let after = HailProcess::start(0, &database_url, &[]).await;
    assert_eq!(
        after.trip(&trip.id, &passenger.token).await.state,
        TripState::Requested
    );
}

crate::on_both_stores!(
    kill_9_loses_nothing_acknowledged_and_dispatch_resumes,
    sigterm_drains_and_exits_cleanly,
);
