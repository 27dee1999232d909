//! The chaos harness for one node: `hail serve` runs as a child process on a file-backed
//! store (or PostgreSQL), the simulator drives it, and the harness kills it with SIGKILL
//! at seeded random moments, restarting it each time on the same address. After every
//! restart and at the end it checks the invariants ([`super::invariants`]).
//!
//! `HAIL_CHAOS_KILLS` (default 20) sets the number of kills and `HAIL_CHAOS_SEED` replays a
//! run; a violation fails the test and names the seed. The report goes to stderr and to
//! `target/chaos-<store>.txt`.

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use hail::{
    shutdown,
    sim::{self, Journal, SimConfig},
};
use rand::{RngExt, SeedableRng, rngs::StdRng};
use sqlx::AnyPool;

use super::invariants::{Findings, check, until_none_waits};
use crate::common::*;

const DISPATCH_DEADLINE_MS: u64 = 6_000;

pub fn settings() -> Vec<(&'static str, String)> {
    vec![
        ("HAIL_OFFER_TIMEOUT_MS", "1500".into()),
        (
            "HAIL_DISPATCH_DEADLINE_MS",
            DISPATCH_DEADLINE_MS.to_string(),
        ),
        // A city 200× faster than life from one address: far more sign-ups, requests and
        // ride steps a minute than the limits let one real client make.
        ("HAIL_SIGNUP_LIMIT_PER_MIN", "1000000".into()),
        ("HAIL_TRIP_REQUEST_LIMIT_PER_MIN", "1000000".into()),
        ("HAIL_WRITE_LIMIT_PER_MIN", "1000000".into()),
    ]
}

/// A fast, small city: many requests and rides a second on a few drivers.
pub fn city(servers: String, seed: u64, journal: Arc<Journal>) -> SimConfig {
    let mut city = SimConfig::new(servers, OPERATOR_TOKEN);
    city.drivers = 25;
    city.ping_interval_ms = 250;
    city.requests_per_min = 900.0;
    city.time_scale = 200.0;
    city.think_time_ms = 200;
    city.duration = Duration::from_secs(24 * 3_600);
    city.seed = seed;
    city.quiet = true;
    city.journal = Some(journal);
    city
}

pub fn seed_and(var: &str, default: u32) -> (u64, u32) {
    let count = std::env::var(var)
        .ok()
        .and_then(|k| k.parse().ok())
        .unwrap_or(default);
    let seed = std::env::var("HAIL_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    (seed, count)
}

pub fn write_report(name: &str, report: &str) {
    eprint!("{report}");
    let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    let _ = std::fs::write(target.join(format!("chaos-{name}.txt")), report);
}

async fn kill_9_again_and_again(backend: Backend) {
    let (seed, kills) = seed_and("HAIL_CHAOS_KILLS", 20);
    let store = format!("{backend:?}").to_lowercase();
    eprintln!("chaos on {store}: {kills} kills, seed {seed} (replay with HAIL_CHAOS_SEED={seed})");

    let dir = tempfile::tempdir().unwrap();
    let database_url = fresh_database(backend, &dir).await;
    let mut node = HailProcess::start(0, &database_url, &settings()).await;
    let port = node.port;
    sqlx::any::install_default_drivers();
    let pool = AnyPool::connect(&database_url)
        .await
        .expect("the harness reads the store");

    let journal = Arc::new(Journal::default());
    let (stop, stopped) = shutdown::channel();
    let simulation = tokio::spawn(sim::run(
        city(node.base.clone(), seed, journal.clone()),
        stopped,
    ));

    let mut rng = StdRng::seed_from_u64(seed);
    let mut findings = Findings::default();
    for kill in 1..=kills {
        // Let the city run for a random while, then pull the plug.
        tokio::time::sleep(Duration::from_millis(rng.random_range(200..1_200))).await;
        node.kill().await;
        check(&pool, &journal, &mut findings, false).await;
        if !findings.violations.is_empty() {
            panic!("after kill {kill}, seed {seed}: {:#?}", findings.violations);
        }
        node = HailProcess::start(port, &database_url, &settings()).await;
    }

    // A last calm stretch lets rides under way finish; then stop the city. Whatever is
    // still requested must expire by its deadline.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.fire();
    let summary = simulation.await.unwrap().expect("the simulation ran");
    until_none_waits(
        &pool,
        Duration::from_millis(DISPATCH_DEADLINE_MS) + PATIENCE,
    )
    .await;
    node.kill().await;
    check(&pool, &journal, &mut findings, true).await;
    let completed: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM trips WHERE state = 'completed'")
        .fetch_one(&pool)
        .await
        .unwrap();

    let report = format!(
        "chaos on {store}: seed {seed}, {kills} kills, {} trips, {} events, {} offers, {} acknowledged transitions checked, \
         {} streamed events checked, {} violations; {completed} rides completed; clients saw {} trips requested, \
         {} http errors, {} socket drops\n",
        findings.trips,
        findings.events,
        findings.offers,
        findings.acknowledged_checked,
        journal.events_streamed.load(Ordering::Relaxed),
        findings.violations.len(),
        summary.trips_requested,
        summary.http_errors,
        summary.socket_drops,
    );
    write_report(&store, &report);
    assert!(
        findings.violations.is_empty(),
        "seed {seed}: {:#?}",
        findings.violations
    );
    assert!(
        findings.acknowledged_checked > 0 && completed > 0,
        "the load did something: {report}"
    );
}

crate::on_both_stores!(kill_9_again_and_again);
