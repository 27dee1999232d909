//! DESIGN §5's invariants, checked against the store and against what the simulated
//! clients were told — after every fault a chaos run injects, and at its end.

use std::{
    collections::{BTreeMap, HashMap},
    sync::atomic::Ordering,
};

use hail::{sim::Journal, trip::Trip};
use sqlx::{AnyPool, Row};

/// An event's `at` is read just before its transaction commits, so when one trip ends and
/// the next is accepted at nearly the same moment on two connections, the stamps may
/// cross by the time a commit waits. A real double assignment lasts a ride, not a commit.
const COMMIT_SLACK_MS: i64 = 1_000;

#[derive(Default, Debug)]
pub struct Findings {
    pub acknowledged_checked: usize,
    pub trips: usize,
    pub events: usize,
    pub offers: usize,
    pub violations: Vec<String>,
}

/// Everything the store must satisfy, given what clients were told. `at_end`: no trip may
/// still wait (the run gave every one time to be dispatched or expire).
pub async fn check(pool: &AnyPool, journal: &Journal, findings: &mut Findings, at_end: bool) {
    // What clients were told, taken *before* the store is read: every change acknowledged
    // by then was committed by then. (In a cluster the other nodes keep acknowledging
    // while the check runs.)
    let acknowledged = journal.acknowledged.lock().unwrap().clone();
    // One snapshot for every read. A killed client does not stop PostgreSQL from finishing
    // a COMMIT it had already received, so the store may still move just after the kill;
    // separate reads could then see a trip row newer than its events.
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
    let mut events: BTreeMap<String, Vec<(i64, String, i64, Trip)>> = BTreeMap::new();
    for row in &rows {
        let trip: String = row.get("trip");
        events.entry(row.get("trip_id")).or_default().push((
            row.get("seq"),
            row.get("event"),
            row.get("at"),
            serde_json::from_str(&trip).expect("an event's trip is a Trip"),
        ));
    }
    let trips: HashMap<String, (String, i64)> = sqlx::query("SELECT id, state, seq FROM trips")
        .fetch_all(&mut *snapshot)
        .await
        .expect("trips readable")
        .iter()
        .map(|row| (row.get("id"), (row.get("state"), row.get("seq"))))
        .collect();
    let offers: Vec<(String, String, String, String)> =
        sqlx::query("SELECT id, trip_id, driver_id, state FROM offers")
            .fetch_all(&mut *snapshot)
            .await
            .expect("offers readable")
            .iter()
            .map(|row| {
                (
                    row.get("id"),
                    row.get("trip_id"),
                    row.get("driver_id"),
                    row.get("state"),
                )
            })
            .collect();
    snapshot.rollback().await.unwrap();
    findings.trips = trips.len();
    findings.events = rows.len();
    findings.offers = offers.len();
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
            && last.3.state.as_str() != state
        {
            violations.push(format!(
                "trip {trip_id} is {state} but its last event says {:?}",
                last.3.state
            ));
        }
        if at_end && state == "requested" {
            violations.push(format!(
                "trip {trip_id} is still requested after its dispatch deadline"
            ));
        }
    }

    // Every acknowledged transition, as acknowledged.
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
                "accepted" => current = trip.driver_id.clone().map(|d| (d, *at)),
                // A lost driver lets go of the trip only before pickup (after it, the
                // event is a flag and the driver stays on the ride).
                "driver_lost" if trip.driver_id.is_some() => {}
                "completed" | "cancelled" | "driver_cancelled" | "driver_lost" | "expired" => {
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
            if pair[1].0 + COMMIT_SLACK_MS < pair[0].1 {
                violations.push(format!(
                    "driver {driver} held {} and {} at once",
                    pair[0].2, pair[1].2
                ));
            }
        }
    }

    // Offers: never two open for one trip or one driver, cluster-wide; an accepted offer
    // is the trip's `accepted` event with that driver.
    let mut open_per_trip: HashMap<&str, usize> = HashMap::new();
    let mut open_per_driver: HashMap<&str, usize> = HashMap::new();
    for (id, trip_id, driver_id, state) in &offers {
        match state.as_str() {
            "open" => {
                *open_per_trip.entry(trip_id).or_default() += 1;
                *open_per_driver.entry(driver_id).or_default() += 1;
                if trips
                    .get(trip_id)
                    .is_some_and(|(state, _)| state != "requested")
                {
                    violations.push(format!(
                        "offer {id} is open for trip {trip_id}, which no longer waits"
                    ));
                }
            }
            "accepted" => {
                let accepted = events.get(trip_id).is_some_and(|history| {
                    history.iter().any(|(_, event, _, trip)| {
                        event == "accepted" && trip.driver_id.as_deref() == Some(driver_id.as_str())
                    })
                });
                if !accepted {
                    violations.push(format!(
                        "offer {id} was accepted but trip {trip_id} never went to {driver_id}"
                    ));
                }
            }
            _ => {}
        }
    }
    for (what, counts) in [("trip", &open_per_trip), ("driver", &open_per_driver)] {
        for (id, count) in counts {
            if *count > 1 {
                violations.push(format!("{what} {id} has {count} open offers"));
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

/// Waits (bounded) until no trip is `requested` any more: each has been dispatched or has
/// expired at its deadline.
pub async fn until_none_waits(pool: &AnyPool, within: std::time::Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let open: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM trips WHERE state = 'requested'")
            .fetch_one(pool)
            .await
            .unwrap();
        if open == 0 || tokio::time::Instant::now() > deadline {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
