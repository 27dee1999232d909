//! `hail sim` against a real server: what the simulator reports agrees with what the
//! server's API says happened.

use std::time::Duration;

use hail::{
    shutdown,
    sim::{self, SimConfig},
    trip::TripState,
};

use crate::common::*;

async fn the_simulators_summary_matches_the_server(backend: Backend) {
    let server = TestServer::start_with(backend, |c| {
        c.dispatch.offer_timeout_ms = 1_000;
        c.dispatch.dispatch_deadline_ms = 4_000;
    })
    .await;
    let mut city = SimConfig::new(server.base.clone(), OPERATOR_TOKEN);
    city.drivers = 12;
    city.ping_interval_ms = 200;
    city.requests_per_min = 300.0;
    city.duration = Duration::from_secs(3);
    city.drain = Duration::from_secs(30);
    city.time_scale = 200.0;
    city.think_time_ms = 100;
    city.seed = 7;
    city.quiet = true;
    let (_stop, stopped) = shutdown::channel();
    let summary = sim::run(city, stopped).await.expect("the simulation runs");
    eprintln!("{}", summary.table());

    assert_eq!(summary.drivers_connected, 12, "{summary:?}");
    assert!(summary.pings_sent > 12 * 10, "{summary:?}");
    assert!(summary.trips_requested >= 5, "{summary:?}");
    assert!(summary.trips_completed >= 1, "{summary:?}");
    assert_eq!(
        summary.trips_unfinished, 0,
        "every ride finished within the drain: {summary:?}"
    );
    assert!(summary.offers_received >= summary.offers_accepted);
    assert!(summary.offer_latency_ms.samples > 0 && summary.offer_latency_ms.p50.is_some());
    assert!(summary.pickup_distance_m.mean.is_some_and(|m| m > 0.0));
    assert_eq!(
        (summary.http_errors, summary.connect_errors),
        (0, 0),
        "{summary:?}"
    );

    let snapshot = server.snapshot().await;
    let count = |state| snapshot.trips.iter().filter(|t| t.state == state).count() as u64;
    assert_eq!(
        snapshot.trips.len() as u64,
        summary.trips_requested,
        "{summary:?}"
    );
    assert_eq!(
        count(TripState::Completed),
        summary.trips_completed,
        "{summary:?}"
    );
    assert_eq!(
        count(TripState::Expired),
        summary.trips_expired,
        "{summary:?}"
    );
    assert_eq!(
        count(TripState::Cancelled),
        summary.trips_cancelled,
        "{summary:?}"
    );
    assert_eq!(snapshot.stats.drivers_online, 12);
    // Completed rides were paid for by the distance driven.
    for trip in snapshot
        .trips
        .iter()
        .filter(|t| t.state == TripState::Completed)
    {
        assert!(trip.fare.as_ref().unwrap().amount >= 4_800, "{trip:?}");
    }
}

crate::on_both_stores!(the_simulators_summary_matches_the_server);
