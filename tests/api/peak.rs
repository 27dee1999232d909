//! `hail load` and `hail peak` against a real server: the cheap generators' sockets reach
//! the server, offers are answered, latencies are recorded, errors are counted — and bad
//! arguments are refused with a clear error before anything is sent.

use std::time::Duration;

use hail::{
    protocol::operators::SearchResults,
    sim::{
        load::{self, LoadConfig},
        peak::{self, PeakConfig},
    },
    trip::TripState,
};

use crate::common::*;

/// A server whose per-address and per-user limits let one generator be a whole city, as
/// the README's benchmarks run it.
async fn city_server(backend: Backend) -> TestServer {
    TestServer::start_with(backend, |c| {
        c.limits.signup_limit_per_min = 1_000_000;
        c.limits.trip_request_limit_per_min = 1_000_000;
        c.limits.write_limit_per_min = 1_000_000;
    })
    .await
}

/// The drivers the generators onboarded ("Load driver N"), as an operator's search finds
/// them.
async fn load_drivers(server: &TestServer) -> usize {
    let found: SearchResults = server
        .get("/v1/ops/search?q=load%20driver", OPERATOR_TOKEN)
        .await
        .ok();
    found.drivers.len()
}

fn small_peak(server: &TestServer) -> PeakConfig {
    let mut config = PeakConfig::new(server.base.clone(), OPERATOR_TOKEN);
    config.drivers = 60;
    config.ping_interval_ms = 200;
    config.requests_per_s = 10.0;
    config.warmup = Duration::from_secs(1);
    config.duration = Duration::from_secs(2);
    config.drain = Duration::from_secs(10);
    config.think_time_ms = 50;
    config.ride_step_ms = 50;
    config
}

async fn every_request_is_offered_and_answered(backend: Backend) {
    let server = city_server(backend).await;
    let report = peak::run(small_peak(&server)).await.expect("the run");
    eprintln!("{}", report.table());

    assert_eq!(report.connected, 60, "{report:?}");
    assert_eq!(report.requests_sent, 20, "{report:?}");
    assert_eq!(report.trips_requested, 20, "{report:?}");
    assert_eq!(
        report.trips_offered, 20,
        "every trip was offered: {report:?}"
    );
    let latency = &report.offer_latency_ms;
    assert_eq!(latency.percentiles.samples, 20, "{report:?}");
    assert!(latency.percentiles.p50 <= latency.percentiles.p99);
    assert!(latency.percentiles.p99 <= latency.max);
    assert!(report.offers_accepted >= 1, "{report:?}");
    assert!(report.trips_completed >= 1, "{report:?}");
    assert_eq!(report.errors_total, 0, "{:?}", report.errors);
    assert!(
        report.accepted_pings_per_s.is_some_and(|pings| pings > 0.0),
        "{report:?}"
    );
    assert!(report.console.is_none());
    // Its drivers are accounts an operator finds by name.
    assert!(load_drivers(&server).await > 0);

    // What the generator was told agrees with the server.
    let snapshot = server.snapshot().await;
    assert_eq!(snapshot.trips.len(), 20);
    let completed = snapshot
        .trips
        .iter()
        .filter(|t| t.state == TripState::Completed)
        .count() as u64;
    assert_eq!(completed, report.trips_completed, "{report:?}");
    let assigned = snapshot
        .trips
        .iter()
        .filter(|t| t.driver_id.is_some())
        .count() as u64;
    assert_eq!(assigned, report.offers_accepted, "{report:?}");
}

async fn a_console_reads_the_operator_stream_through_the_run(backend: Backend) {
    let server = city_server(backend).await;
    let mut config = small_peak(&server);
    config.console = true;
    config.server_pid = Some(std::process::id());
    let report = peak::run(config).await.expect("the run");
    eprintln!("{}", report.table());

    assert_eq!(report.trips_offered, 20, "{report:?}");
    assert_eq!(report.errors_total, 0, "{:?}", report.errors);
    let console = report.console.as_ref().expect("a console report");
    assert_eq!(console.connections, 1, "{console:?}");
    assert_eq!(console.by_type.get("snapshot"), Some(&1), "{console:?}");
    assert!(
        console.by_type.get("drivers").is_some_and(|n| *n > 0),
        "{console:?}"
    );
    assert!(
        console.by_type.get("offer").is_some_and(|n| *n >= 20),
        "{console:?}"
    );
    assert!(report.server_cores.is_some_and(|c| c > 0.0), "{report:?}");
    assert!(
        report
            .cpu_stolen
            .is_some_and(|share| (0.0..=1.0).contains(&share)),
        "{report:?}"
    );
}

async fn errors_are_counted_not_hidden(backend: Backend) {
    // Offers lapse before the drivers answer: every accept is refused, and said so.
    let server = TestServer::start_with(backend, |c| {
        c.limits.signup_limit_per_min = 1_000_000;
        c.limits.write_limit_per_min = 1_000_000;
        c.dispatch.offer_timeout_ms = 200;
    })
    .await;
    let mut config = small_peak(&server);
    // Twice the offer timeout: every accept still comes too late, and more of them are
    // sent before the run ends (at 1 s a loaded machine once counted only 15 refusals).
    config.think_time_ms = 400;
    config.drain = Duration::from_secs(2);
    let report = peak::run(config).await.expect("the run");
    eprintln!("{}", report.table());
    assert_eq!(report.trips_offered, 20, "{report:?}");
    assert_eq!(report.offers_accepted, 0, "{report:?}");
    let refused = report
        .errors
        .iter()
        .find(|(kind, _)| kind.starts_with("POST /v1/offers/{id}/accept: 409"))
        .map_or(0, |(_, count)| *count);
    assert!(refused >= 20, "{:?}", report.errors);
    assert_eq!(report.errors_total, report.errors.values().sum::<u64>());

    // Sign-ups at the server's defaults (30 a minute from one address): the run cannot
    // start, and says why.
    let server = TestServer::start(backend).await;
    let mut config = small_peak(&server);
    config.requests_per_s = 50.0;
    let error = peak::run(config).await.expect_err("sign-ups are limited");
    let text = format!("{error:#}");
    assert!(
        text.contains("429") && text.contains("HAIL_SIGNUP_LIMIT_PER_MIN"),
        "{text}"
    );

    // No server at all.
    let mut server = city_server(backend).await;
    let config = small_peak(&server);
    let metrics = format!("{}/metrics", server.base);
    server.stop().await;
    // Found before anything else is tried: the server's own count is read first.
    let error = peak::run(config).await.expect_err("no server");
    assert!(format!("{error:#}").contains(&metrics), "{error:#}");
}

async fn bad_arguments_are_refused(backend: Backend) {
    let server = city_server(backend).await;
    type Spoil = fn(&mut PeakConfig);
    let cases: [(Spoil, &str); 8] = [
        (|c| c.requests_per_s = 0.0, "--requests-per-s"),
        (|c| c.duration = Duration::ZERO, "--duration"),
        (
            |c| {
                c.requests_per_s = 10_000.0;
                c.duration = Duration::from_secs(3_600);
            },
            "at most 1000000 a run",
        ),
        (
            |c| c.metrics_url = Some("http://127.0.0.1:9/metrics".into()),
            "127.0.0.1:9/metrics",
        ),
        (|c| c.requests_per_s = f64::NAN, "--requests-per-s"),
        (|c| c.drivers = 0, "--drivers"),
        (|c| c.server = "ftp://example".into(), "http://host:port"),
        (|c| c.server_pid = Some(u32::MAX), "--server-pid"),
    ];
    for (spoil, expected) in cases {
        let mut config = small_peak(&server);
        spoil(&mut config);
        let error = peak::run(config).await.expect_err(expected);
        assert!(format!("{error:#}").contains(expected), "{error:#}");
    }
    // Nothing was onboarded: the arguments were checked first.
    assert_eq!(load_drivers(&server).await, 0);
    assert_eq!(server.snapshot().await.stats.drivers_online, 0);
}

async fn load_pings_reach_the_server(backend: Backend) {
    let server = city_server(backend).await;
    let config = LoadConfig {
        server: server.base.clone(),
        metrics_url: None,
        operator_token: OPERATOR_TOKEN.into(),
        drivers: 10,
        rate: 5.0,
        burst: 1,
        warmup: Duration::from_millis(500),
        duration: Duration::from_secs(1),
        seed: 1,
        json: false,
    };
    let report = load::run(config).await.expect("the run");
    assert_eq!(report.connected, 10, "{report:?}");
    assert!(report.accepted_pings_per_s > 0.0, "{report:?}");
    assert_eq!(
        (
            report.error_replies,
            report.rate_limited,
            report.dropped_sockets
        ),
        (0, 0, 0),
        "{report:?}"
    );
}

crate::on_both_stores!(
    every_request_is_offered_and_answered,
    a_console_reads_the_operator_stream_through_the_run,
    errors_are_counted_not_hidden,
    bad_arguments_are_refused,
    load_pings_reach_the_server,
);
