//! The store under stress: outages, SERIALIZABLE isolation, several nodes migrating at
//! once. Same behaviour and the same error codes on SQLite and PostgreSQL.

use hail::{
    error::ErrorCode,
    protocol::rest::{DependencyState, Readiness, TripRequest},
    trip::{EventKind, Trip, TripState},
};
use reqwest::StatusCode;
use serde_json::json;

use crate::common::*;

/// Polls `/readyz` until it answers `want`, within the patience bound.
async fn ready_becomes(server: &Client, want: StatusCode) -> Readiness {
    eventually("readiness", || async {
        let reply = server
            .call(reqwest::Method::GET, "/readyz", None, None::<&()>)
            .await;
        (reply.status == want).then(|| reply.expect(want))
    })
    .await
}

async fn store_outage_answers_503_and_recovers(backend: Backend) {
    // PostgreSQL is reached through a gate we can shut; SQLite has no server to stop, so
    // its store layer simulates the outage.
    let gate = match backend {
        Backend::Postgres => Some(Gate::start(postgres_address(&postgres_admin_url())).await),
        Backend::Sqlite => None,
    };
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(backend, &dir).await;
    if let Some(gate) = &gate {
        config.database_url = through_port(&config.database_url, gate.port);
    }
    config.db_acquire_timeout_ms = 300;
    let server = TestServer::from_config(config, dir).await;
    let store = server.app().rides.store.clone();
    let outage = |down: bool| match &gate {
        Some(gate) if down => gate.shut(),
        Some(gate) => gate.reopen(),
        None => store.simulate_outage(down),
    };

    let passenger = server.passenger().await;
    let waiting = server.passenger().await;
    let (driver, mut driver_ws) = server.online_driver(near_gangnam(100.0)).await;
    let trip = server
        .request_trip(&passenger, gangnam(), city_hall())
        .await;
    let offer = driver_ws.offer().await;
    ready_becomes(&server, StatusCode::OK).await;

    outage(true);
    let readiness = ready_becomes(&server, StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(readiness.store, DependencyState::Unavailable);
    let attempts = [
        server
            .post(
                "/v1/trips",
                &waiting.token,
                &TripRequest {
                    pickup: gangnam(),
                    dropoff: city_hall(),
                },
            )
            .await,
        server.answer(&driver, &offer, "accept").await,
        server
            .post(
                &format!("/v1/trips/{}/cancel", trip.id),
                &passenger.token,
                &json!({}),
            )
            .await,
        server
            .call(
                reqwest::Method::POST,
                "/v1/passengers",
                None,
                Some(&json!({"name": "x"})),
            )
            .await,
    ];
    for reply in &attempts {
        assert_eq!(
            reply.error(StatusCode::SERVICE_UNAVAILABLE),
            ErrorCode::Unavailable
        );
    }

    outage(false);
    ready_becomes(&server, StatusCode::OK).await;
    // Nothing that was refused happened; everything acknowledged is there.
    assert_eq!(
        server.trip(&trip.id, &passenger.token).await.state,
        TripState::Requested
    );
    assert_eq!(server.events(&trip.id, &passenger.token, 0).await.len(), 1);
    assert_eq!(server.snapshot().await.trips.len(), 1);
    // And service resumes without a restart: the open offer still stands (or a new one
    // comes), and a new trip is dispatched too.
    let accepted: Trip = server.answer(&driver, &offer, "accept").await.ok();
    assert_eq!(accepted.id, trip.id);
    server.step(&driver, &trip.id, "cancel").await.ok::<Trip>();
    let second = server
        .request_trip(&waiting, near_gangnam(50.0), city_hall())
        .await;
    assert_eq!(second.state, TripState::Requested);
    let offer = driver_ws.offer().await;
    assert!(
        offer.trip_id == second.id || offer.trip_id == trip.id,
        "{offer:?}"
    );
    server.answer(&driver, &offer, "accept").await.ok::<Trip>();
}

/// Many clients race on the same trips under SERIALIZABLE isolation (PostgreSQL-wire
/// distributed databases run nothing else): every answer is a success or a conflict,
/// never a server error, and each trip ends with one story and gapless seqs.
async fn racing_clients_under_serializable_isolation(backend: Backend) {
    let server = TestServer::start(backend).await;
    if backend == Backend::Postgres {
        use sqlx::Connection;
        let url = &server.app().config.database_url;
        let name = url.rsplit('/').next().unwrap().split('?').next().unwrap();
        let mut admin = sqlx::PgConnection::connect(&postgres_admin_url())
            .await
            .unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "ALTER DATABASE {name} SET default_transaction_isolation TO 'serializable'"
        )))
        .execute(&mut admin)
        .await
        .unwrap();
        // Existing pool connections keep the old default; new ones take the new one.
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
        )))
        .execute(&mut admin)
        .await
        .unwrap();
        let mut check = sqlx::PgConnection::connect(url).await.unwrap();
        let level: String = sqlx::query_scalar("SHOW transaction_isolation")
            .fetch_one(&mut check)
            .await
            .unwrap();
        assert_eq!(level, "serializable");
    }
    const RIDES: usize = 12;
    let mut drivers = Vec::new();
    for i in 0..RIDES {
        drivers.push(
            server
                .online_driver(near_gangnam(100.0 + i as f64 * 10.0))
                .await,
        );
    }
    let mut passengers = Vec::new();
    for _ in 0..RIDES {
        passengers.push(server.passenger().await);
    }
    // Every passenger requests at once.
    let requests = passengers
        .iter()
        .map(|p| server.request_trip(p, gangnam(), city_hall()));
    let trips: Vec<Trip> = futures_util::future::join_all(requests).await;
    // Every driver gets one offer; each accept races its passenger's cancel.
    let mut offers = Vec::new();
    for (account, ws) in drivers.iter_mut() {
        offers.push((account.clone(), ws.offer().await));
    }
    let trip_owner = |trip_id: &str| {
        let index = trips.iter().position(|t| t.id == trip_id).unwrap();
        passengers[index].clone()
    };
    let races = offers.iter().map(|(driver, offer)| {
        let owner = trip_owner(&offer.trip_id);
        let server = &server;
        async move {
            let cancel_path = format!("/v1/trips/{}/cancel", offer.trip_id);
            let no_reason = json!({});
            let (accepted, cancelled) = tokio::join!(
                server.answer(driver, offer, "accept"),
                server.post(&cancel_path, &owner.token, &no_reason)
            );
            (offer.trip_id.clone(), owner, accepted, cancelled)
        }
    });
    for (trip_id, owner, accepted, cancelled) in futures_util::future::join_all(races).await {
        for reply in [&accepted, &cancelled] {
            assert!(
                reply.status.is_success() || reply.status == StatusCode::CONFLICT,
                "{reply:?}"
            );
        }
        assert!(
            cancelled.status.is_success(),
            "a passenger may always cancel before pickup: {cancelled:?}"
        );
        let events = server.events(&trip_id, &owner.token, 0).await;
        let seqs: Vec<i64> = events.iter().map(|e| e.seq).collect();
        let names: Vec<EventKind> = events.iter().map(|e| e.event).collect();
        if accepted.status.is_success() {
            assert_eq!(
                names,
                [
                    EventKind::Requested,
                    EventKind::Accepted,
                    EventKind::Cancelled
                ]
            );
            assert_eq!(seqs, [1, 2, 3]);
        } else {
            assert_eq!(names, [EventKind::Requested, EventKind::Cancelled]);
            assert_eq!(seqs, [1, 2]);
        }
    }
    assert_eq!(
        server.snapshot().await.stats.drivers_busy,
        0,
        "cancelled rides free their drivers"
    );
}

/// Several nodes starting at once on one empty database all come up; the schema is
/// created once.
async fn nodes_starting_at_once_migrate_safely(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(backend, &dir).await;
    let starts = (0..3).map(|_| hail::server::start(config.clone()));
    let servers = futures_util::future::join_all(starts).await;
    let mut running = Vec::new();
    for server in servers {
        running.push(server.expect("every node starts"));
    }
    // They share one store: what one node writes, another reads.
    let one = Client::new(format!("http://{}", running[0].addr));
    let two = Client::new(format!("http://{}", running[2].addr));
    let passenger = one.passenger().await;
    let trip = one.request_trip(&passenger, gangnam(), city_hall()).await;
    assert_eq!(two.trip(&trip.id, &passenger.token).await.id, trip.id);
    for server in running {
        server.shutdown().await.unwrap();
    }
}

crate::on_both_stores!(
    store_outage_answers_503_and_recovers,
    racing_clients_under_serializable_isolation,
    nodes_starting_at_once_migrate_safely,
);

/// SQLite has one writer. hail's writes queue for it in the process, holding no store
/// connection while they wait, so a pile of writes stuck behind the lock (here another
/// process's transaction) leaves the connections to reads; once the lock is free, every
/// one of them commits. (Without the queue the writers took every connection, sleeping in
/// SQLite's busy handler, and this read answered 503 after the acquire timeout.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_writes_queue_without_taking_the_connections_reads_need() {
    use sqlx::Connection as _;
    const WRITERS: usize = 12;
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(Backend::Sqlite, &dir).await;
    config.db_max_connections = 4;
    config.db_acquire_timeout_ms = 1_000;
    let database_url = config.database_url.clone();
    let server = TestServer::from_config(config, dir).await;
    let passenger = server.passenger().await;
    let trip = server
        .request_trip(&passenger, gangnam(), city_hall())
        .await;

    let mut other = sqlx::SqliteConnection::connect(&database_url)
        .await
        .unwrap();
    sqlx::raw_sql("BEGIN IMMEDIATE")
        .execute(&mut other)
        .await
        .unwrap();
    let signups = futures_util::future::join_all((0..WRITERS).map(|_| server.passenger()));
    let meanwhile = async {
        // One sign-up waits at SQLite's lock with a connection, the rest in the queue.
        eventually("sign-ups queued for the writer", || async {
            let waiting = gauge(&server.metrics().await, "hail_store_writes_waiting");
            (waiting == Some(WRITERS as i64 - 1)).then_some(())
        })
        .await;
        let in_use = gauge(&server.metrics().await, "hail_store_connections_in_use");
        assert_eq!(in_use, Some(1));
        assert_eq!(server.trip(&trip.id, &passenger.token).await.id, trip.id);
        sqlx::raw_sql("COMMIT").execute(&mut other).await.unwrap();
    };
    let (accounts, ()) = tokio::join!(signups, meanwhile);
    assert_eq!(accounts.len(), WRITERS);
    let waiting = gauge(&server.metrics().await, "hail_store_writes_waiting");
    assert_eq!(waiting, Some(0));

    // Writers that give up while queued (their clients hang up) leave the queue.
    sqlx::raw_sql("BEGIN IMMEDIATE")
        .execute(&mut other)
        .await
        .unwrap();
    let impatient = reqwest::Client::builder()
        .timeout(std::time::Duration::from_millis(300))
        .build()
        .unwrap();
    let url = format!("{}/v1/passengers", server.base);
    let gave_up = futures_util::future::join_all(
        (0..4).map(|_| impatient.post(&url).json(&json!({"name": "Minji"})).send()),
    )
    .await;
    assert!(gave_up.iter().all(|reply| reply.is_err()), "{gave_up:?}");
    eventually("the queue emptied by writers giving up", || async {
        let waiting = gauge(&server.metrics().await, "hail_store_writes_waiting");
        (waiting == Some(0)).then_some(())
    })
    .await;
    sqlx::raw_sql("ROLLBACK").execute(&mut other).await.unwrap();
}

/// A gauge's value in `/metrics`' text.
fn gauge(metrics: &str, name: &str) -> Option<i64> {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}
