//! The operator stream: a snapshot, then deltas — moved drivers, trip events, the offer
//! audit log and figures.

use hail::{
    fleet::DriverState,
    protocol::{
        operators::{OfferLog, OfferOutcome, OpsMessage, Snapshot},
        rest::ClusterView,
    },
    trip::{EventKind, Trip, TripEvent},
};
use reqwest::StatusCode;

use crate::common::*;

async fn ops_ws(server: &TestServer) -> Ws<OpsMessage> {
    Ws::connect(&format!(
        "{}/v1/ops/ws?token={OPERATOR_TOKEN}",
        server.ws_base()
    ))
    .await
}

async fn next_offer_line(ops: &mut Ws<OpsMessage>) -> OfferLog {
    ops.next_where("offer", |m| match m {
        OpsMessage::Offer(line) => Some(line),
        _ => None,
    })
    .await
}

async fn operator_stream_shows_dispatch_live(backend: Backend) {
    let server = TestServer::start(backend).await;
    let passenger = server.passenger().await;
    let (early, _early_ws) = server.online_driver(near_gangnam(300.0)).await;

    let mut ops = ops_ws(&server).await;
    let snapshot: Snapshot = ops
        .next_where("snapshot", |m| match m {
            OpsMessage::Snapshot(snapshot) => Some(snapshot),
            _ => None,
        })
        .await;
    assert_eq!(snapshot.stats.drivers_online, 1);
    assert_eq!(snapshot.drivers[0].id, early.id);
    assert_eq!(snapshot.drivers[0].state, DriverState::Available);

    // A driver coming online shows up in the next movement batch, compactly.
    let (late, mut late_ws) = server.online_driver(near_gangnam(100.0)).await;
    let row = ops
        .next_where("the late driver in a batch", |m| match m {
            OpsMessage::Drivers { drivers, .. } => drivers.into_iter().find(|d| d.0 == late.id),
            _ => None,
        })
        .await;
    assert_eq!(row.1, DriverState::Available);
    assert!((row.2.unwrap() - near_gangnam(100.0).lat()).abs() < 1e-4);

    // A request: its event, then the audit line saying who was offered it and why.
    let trip = server
        .request_trip(&passenger, gangnam(), city_hall())
        .await;
    let event: TripEvent = ops
        .next_where("trip_event", |m| match m {
            OpsMessage::TripEvent(event) => Some(event),
            _ => None,
        })
        .await;
    assert_eq!(
        (event.trip_id.as_str(), event.event),
        (trip.id.as_str(), EventKind::Requested)
    );
    let offer = next_offer_line(&mut ops).await;
    assert_eq!(offer.trip_id, trip.id);
    assert_eq!(offer.driver_id, late.id, "the nearer driver");
    assert_eq!(offer.outcome, OfferOutcome::Made);
    assert_eq!(
        (offer.rank, offer.candidates, offer.radius_m),
        (Some(1), Some(2), Some(3_000.0))
    );
    assert!((offer.pickup_distance_m.unwrap() - 100.0).abs() <= 1.0);

    let offered = late_ws.offer().await;
    server.answer(&late, &offered, "accept").await.ok::<Trip>();
    let accepted = next_offer_line(&mut ops).await;
    assert_eq!(
        (accepted.outcome, accepted.offer_id),
        (OfferOutcome::Accepted, offered.offer_id)
    );
    let (stats, figures) = ops
        .next_where("figures", |m| match m {
            OpsMessage::Figures { stats, figures } => Some((stats, figures)),
            _ => None,
        })
        .await;
    assert_eq!(figures.requested, 1);
    assert_eq!(figures.acceptance_rate, Some(1.0));
    assert_eq!(stats.drivers_busy, 1);
    assert_eq!(stats.trips_active, 1);
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
    let reply = server.get("/v1/ops/cluster", &passenger.token).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
}

/// One node is a cluster of one: it leads, at epoch 1 or later, and lists itself.
async fn a_single_node_leads_and_lists_itself(backend: Backend) {
    let server = TestServer::start(backend).await;
    let node = server.app().node.clone();
    let cluster: ClusterView = eventually("the node reports itself", || async {
        let cluster: ClusterView = server.get("/v1/ops/cluster", OPERATOR_TOKEN).await.ok();
        (cluster.leader.is_some() && !cluster.nodes.is_empty()).then_some(cluster)
    })
    .await;
    assert_eq!(cluster.leader.as_deref(), Some(node.id.as_str()));
    assert!(cluster.epoch >= 1);
    assert_eq!(cluster.nodes.len(), 1);
    assert_eq!(cluster.nodes[0].id, node.id);
    assert_eq!(cluster.nodes[0].url, server.base);
    assert!(cluster.nodes[0].leader);
}

/// Issue 9's deadlock: the operator stream's figures once locked the fleet and then the
/// dispatcher's book while a dispatch pass held them the other way round, which hung the
/// server. Now no code outside the fleet can hold its lock, and the dispatcher owns its
/// book without one. This runs many operator streams (snapshots, batches, figures) beside
/// heavy dispatch — fast pings, a request every 50 ms, answers and lapses — on a
/// multi-threaded runtime, and asserts the server keeps answering throughout.
async fn the_operator_stream_and_dispatch_run_side_by_side_under_load(backend: Backend) {
    use std::time::Duration;

    use hail::{
        shutdown,
        sim::{self, SimConfig},
    };
    use tokio::time::{Instant, timeout};

    let server = TestServer::start_with(backend, |c| {
        c.dispatch.offer_timeout_ms = 300;
        c.dispatch.dispatch_deadline_ms = 3_000;
        // 20 requests a second from one address: load, not a person.
        c.limits.signup_limit_per_min = 100_000;
        c.limits.trip_request_limit_per_min = 100_000;
        c.limits.write_limit_per_min = 100_000;
    })
    .await;
    let mut watchers = Vec::new();
    for _ in 0..12 {
        watchers.push(ops_ws(&server).await);
    }
    let mut city = SimConfig::new(server.base.clone(), OPERATOR_TOKEN);
    city.drivers = 60;
    city.ping_interval_ms = 100;
    city.requests_per_min = 1_200.0;
    city.duration = Duration::from_secs(6);
    city.drain = Duration::ZERO;
    city.time_scale = 50.0;
    city.think_time_ms = 200;
    city.accept_probability = 0.5;
    city.decline_probability = 0.2;
    city.quiet = true;
    let (_stop, stopped) = shutdown::channel();
    let load = tokio::spawn(sim::run(city, stopped));

    // Every operator stream keeps delivering, and the server answers within a second,
    // for as long as the load runs.
    let mut figures = vec![0usize; watchers.len()];
    let until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < until {
        let health = timeout(
            Duration::from_secs(2),
            server.call(reqwest::Method::GET, "/healthz", None, None::<&()>),
        )
        .await
        .expect("the server answers while dispatch and operator streams run");
        assert_eq!(health.status, StatusCode::OK);
        for (watcher, seen) in watchers.iter_mut().zip(figures.iter_mut()) {
            while let Some(message) = watcher.try_next(Duration::from_millis(1)).await {
                if matches!(message, OpsMessage::Figures { .. }) {
                    *seen += 1;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let summary = load.await.unwrap().expect("the load ran");
    assert!(
        summary.offers_received > 20,
        "dispatch was busy: {summary:?}"
    );
    assert!(
        figures.iter().all(|seen| *seen >= 3),
        "every stream kept sending figures: {figures:?}"
    );
}

/// A day's trips make a snapshot far larger than any other socket's messages: the
/// operator stream still delivers it (it once failed past 256 KiB, and a console then
/// reconnected for ever).
async fn a_large_snapshot_still_reaches_the_console(backend: Backend) {
    let server = TestServer::start(backend).await;
    let passenger = server.passenger().await;
    let store = &server.app().rides.store;
    let cause = hail::store::Cause::by(hail::trip::Actor::system(), hail::trip::Timestamp::now());
    for _ in 0..900 {
        let new = hail::store::NewTrip {
            passenger_id: passenger.id.clone(),
            pickup: gangnam(),
            dropoff: city_hall(),
            fare_estimate: hail::trip::Money {
                amount: 10_000,
                currency: "KRW".into(),
            },
            idempotency_key: None,
        };
        let hail::store::Creation::Created(event) = store
            .create_trip(new, hail::trip::Timestamp::now())
            .await
            .unwrap()
        else {
            panic!("a new trip")
        };
        store
            .transition(&event.trip_id, &hail::trip::Change::Cancel, &cause, |_| {
                Ok(())
            })
            .await
            .unwrap();
    }
    let rest = server.get("/v1/ops/snapshot", OPERATOR_TOKEN).await;
    assert!(rest.body.len() > 256 * 1024, "{} bytes", rest.body.len());
    let mut ops = ops_ws(&server).await;
    let snapshot = ops
        .next_where("snapshot", |m| match m {
            OpsMessage::Snapshot(snapshot) => Some(snapshot),
            _ => None,
        })
        .await;
    assert_eq!(snapshot.trips.len(), 900);
}

crate::on_both_stores!(
    a_large_snapshot_still_reaches_the_console,
    operator_stream_shows_dispatch_live,
    the_operator_stream_and_dispatch_run_side_by_side_under_load,
    only_operators_may_watch,
    a_single_node_leads_and_lists_itself,
);
