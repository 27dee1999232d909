//! The chaos harness: `hail serve` runs as a child process on a file-backed store (or
//! PostgreSQL), the simulator drives it, and the harness kills it with SIGKILL at seeded
//! random moments, restarting it each time on the same address. After every restart and
//! at the end it checks, from what the simulated clients were acknowledged and from the
//! store itself:
//!
//! - every acknowledged transition is in the store, as acknowledged;
//! - every trip's events are seqs 1..=n without gaps, and the trip row is at seq n;
//! - no driver ever held two trips at once (nor two active trips now);
//! - every resumed trip stream delivered each event once, in order;
//! - at the end every trip is terminal or still active with a driver — none is left
//!   `requested` past its dispatch deadline.
//!
//! `HAIL_CHAOS_KILLS` (default 20) sets the number of kills and `HAIL_CHAOS_SEED` replays a
//! run; a violation fails the test and names the seed. The report goes to stderr and to
//! `target/chaos-<store>.txt`.

mod common;

use std::{
    collections::{BTreeMap, HashMap},
    process::Stdio,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use common::*;
use hail::sim::{self, Journal, SimConfig};
use rand::{RngExt, SeedableRng, rngs::StdRng};
use serde_json::Value;
use sqlx::{AnyPool, Row};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
    sync::watch,
};

const DISPATCH_DEADLINE_MS: u64 = 6_000;
/// See the overlap check in `check`.
const COMMIT_SLACK_MS: i64 = 1_000;

async fn spawn_hail(port: u16, database_url: &str) -> Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_hail"))
        .arg("serve")
        .env("HAIL_LISTEN", format!("127.0.0.1:{port}"))
        .env("HAIL_DATABASE_URL", database_url)
        .env("HAIL_OPERATOR_TOKEN", OPERATOR_TOKEN)
        .env("HAIL_OFFER_TIMEOUT_MS", "1500")
        .env(
            "HAIL_DISPATCH_DEADLINE_MS",
            DISPATCH_DEADLINE_MS.to_string(),
        )
        .env("HAIL_DISPATCH_RETRY_MS", "50")
        .env("HAIL_LOG", "error")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("hail starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    tokio::time::timeout(PATIENCE, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.starts_with("hail listening on ") {
                return;
            }
        }
        panic!("hail exited before listening");
    })
    .await
    .expect("hail listens in time");
    child
}

#[derive(Default)]
struct Findings {
    acknowledged_checked: usize,
    trips: usize,
    events: usize,
    violations: Vec<String>,
}

/// Everything the store must satisfy, given what clients were told.
async fn check(pool: &AnyPool, journal: &Journal, findings: &mut Findings, at_end: bool) {
    // One snapshot for both reads. A killed client does not stop PostgreSQL from finishing
    // a COMMIT it had already received, so the store may still move just after the kill;
    // two separate reads could then see a trip row newer than its events.
    let mut snapshot = pool.begin().await.expect("store readable");
    if pool
        .connect_options()
        .database_url
        .scheme()
        .starts_with("postgres")
    {
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            .execute(&mut *snapshot)
            .await
            .unwrap();
    }
    let rows =
        sqlx::query("SELECT trip_id, seq, event, at, trip FROM trip_events ORDER BY trip_id, seq")
            .fetch_all(&mut *snapshot)
            .await
            .expect("events readable");
    let mut events: BTreeMap<String, Vec<(i64, String, i64, Value)>> = BTreeMap::new();
    for row in &rows {
        let trip: String = row.get("trip");
        events.entry(row.get("trip_id")).or_default().push((
            row.get("seq"),
            row.get("event"),
            row.get("at"),
            serde_json::from_str(&trip).expect("event trip is JSON"),
        ));
    }
    let trips: HashMap<String, (String, i64)> = sqlx::query("SELECT id, state, seq FROM trips")
        .fetch_all(&mut *snapshot)
        .await
        .expect("trips readable")
        .iter()
        .map(|row| (row.get("id"), (row.get("state"), row.get("seq"))))
        .collect();
    snapshot.rollback().await.unwrap();
    findings.trips = trips.len();
    findings.events = rows.len();
    let violations = &mut findings.violations;

    // Gapless seqs, and each trip row agrees with its last event.
    for (trip_id, (state, seq)) in &trips {
        let history = events.get(trip_id).map(Vec::as_slice).unwrap_or_default();
        let seqs: Vec<i64> = history.iter().map(|e| e.0).collect();
        if seqs != (1..=*seq).collect::<Vec<_>>() {
            violations.push(format!(
                "trip {trip_id} at seq {seq} has event seqs {seqs:?}"
            ));
        }
        if let Some(last) = history.last()
            && last.3["state"] != state.as_str()
        {
            violations.push(format!(
                "trip {trip_id} is {state} but its last event says {}",
                last.3["state"]
            ));
        }
        if at_end && state == "requested" {
            violations.push(format!(
                "trip {trip_id} is still requested after its dispatch deadline"
            ));
        }
    }

    // Every acknowledged transition, as acknowledged.
    let acknowledged = journal.acknowledged.lock().unwrap().clone();
    findings.acknowledged_checked = acknowledged.len();
    for ack in &acknowledged {
        let found = events
            .get(&ack.trip_id)
            .and_then(|h| h.iter().find(|e| e.0 == ack.seq));
        if found.is_none_or(|e| e.1 != ack.event) {
            violations.push(format!(
                "acknowledged {} at seq {} of {} is missing (store has {:?})",
                ack.event,
                ack.seq,
                ack.trip_id,
                found.map(|e| &e.1)
            ));
        }
    }

    // No driver ever on two trips at once: the intervals from `accepted` to the trip
    // leaving the driver must not overlap.
    let mut held: HashMap<String, Vec<(i64, i64, String)>> = HashMap::new();
    for (trip_id, history) in &events {
        let mut current: Option<(String, i64)> = None;
        for (_, event, at, trip) in history {
            match event.as_str() {
                "accepted" => current = trip["driver_id"].as_str().map(|d| (d.to_string(), *at)),
                "completed" | "cancelled" | "driver_cancelled" | "expired" => {
                    if let Some((driver, from)) = current.take() {
                        held.entry(driver)
                            .or_default()
                            .push((from, *at, trip_id.clone()));
                    }
                }
                _ => {}
            }
        }
        if let Some((driver, from)) = current {
            held.entry(driver)
                .or_default()
                .push((from, i64::MAX, trip_id.clone()));
        }
    }
    for (driver, mut intervals) in held {
        intervals.sort();
        for pair in intervals.windows(2) {
            // An event's `at` is read just before its transaction commits, so when one
            // trip ends and the next is accepted at nearly the same moment on two
            // connections, the stamps may cross by the time a commit waits. A real double
            // assignment lasts a ride, not a commit.
            if pair[1].0 + COMMIT_SLACK_MS < pair[0].1 {
                violations.push(format!(
                    "driver {driver} held {} and {} at once",
                    pair[0].2, pair[1].2
                ));
            }
        }
    }

    // Streams resumed with after=<last seq> never skipped or repeated an event.
    for (what, counter) in [
        ("gaps", &journal.stream_gaps),
        ("repeats", &journal.stream_repeats),
    ] {
        let count = counter.load(Ordering::Relaxed);
        if count > 0 {
            violations.push(format!("trip streams delivered {count} {what}"));
        }
    }
}

async fn kill_9_again_and_again(backend: Backend) {
    let kills: u32 = std::env::var("HAIL_CHAOS_KILLS")
        .ok()
        .and_then(|k| k.parse().ok())
        .unwrap_or(20);
    let seed: u64 = std::env::var("HAIL_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    let store = format!("{backend:?}").to_lowercase();
    eprintln!("chaos on {store}: {kills} kills, seed {seed} (replay with HAIL_CHAOS_SEED={seed})");

    let dir = tempfile::tempdir().unwrap();
    let database_url = fresh_database(backend, &dir).await;
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let mut child = spawn_hail(port, &database_url).await;
    sqlx::any::install_default_drivers();
    let pool = AnyPool::connect(&database_url)
        .await
        .expect("the harness reads the store");

    let journal = Arc::new(Journal::default());
    let mut city = SimConfig::new(format!("http://127.0.0.1:{port}"), OPERATOR_TOKEN);
    city.drivers = 25;
    city.ping_interval_ms = 250;
    city.requests_per_min = 900.0;
    city.time_scale = 200.0;
    city.think_time_ms = 200;
    city.duration = Duration::from_secs(24 * 3_600);
    city.seed = seed;
    city.quiet = true;
    city.journal = Some(journal.clone());
    let (stop, stopped) = watch::channel(false);
    let simulation = tokio::spawn(sim::run(city, stopped));

    let mut rng = StdRng::seed_from_u64(seed);
    let mut findings = Findings::default();
    for kill in 1..=kills {
        // Let the city run for a random while, then pull the plug.
        tokio::time::sleep(Duration::from_millis(rng.random_range(200..1_200))).await;
        child.kill().await.expect("SIGKILL");
        check(&pool, &journal, &mut findings, false).await;
        if !findings.violations.is_empty() {
            panic!("after kill {kill}, seed {seed}: {:#?}", findings.violations);
        }
        child = spawn_hail(port, &database_url).await;
    }

    // A last calm stretch lets rides under way finish; then stop the city. Whatever is
    // still requested must expire by its deadline.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let _ = stop.send(true);
    let summary = simulation.await.unwrap().expect("the simulation ran");
    let deadline =
        tokio::time::Instant::now() + Duration::from_millis(DISPATCH_DEADLINE_MS) + PATIENCE;
    loop {
        let open: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM trips WHERE state = 'requested'")
            .fetch_one(&pool)
            .await
            .unwrap();
        if open == 0 || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    child.kill().await.expect("SIGKILL");
    check(&pool, &journal, &mut findings, true).await;
    let completed: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM trips WHERE state = 'completed'")
        .fetch_one(&pool)
        .await
        .unwrap();

    let report = format!(
        "chaos on {store}: seed {seed}, {kills} kills, {} trips, {} events, {} acknowledged transitions checked, \
         {} streamed events checked, {} violations; {completed} rides completed; clients saw {} trips requested, \
         {} http errors, {} socket drops\n",
        findings.trips,
        findings.events,
        findings.acknowledged_checked,
        journal.events_streamed.load(Ordering::Relaxed),
        findings.violations.len(),
        summary.trips_requested,
        summary.http_errors,
        summary.socket_drops,
    );
    eprint!("{report}");
    let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    let _ = std::fs::write(target.join(format!("chaos-{store}.txt")), &report);
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

on_both_stores!(kill_9_again_and_again);
