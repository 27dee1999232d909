//! The store under stress: outages, SERIALIZABLE isolation, several nodes migrating at
//! once. Same behaviour and the same error codes on SQLite and PostgreSQL.

mod common;

use common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

/// Polls `/readyz` until it answers `want`, within the patience bound.
async fn ready_becomes(server: &TestServer, want: StatusCode) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (status, _) = server
            .request(reqwest::Method::GET, "/readyz", None, None)
            .await;
        if status == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/readyz never answered {want}"
        );
        tokio::task::yield_now().await;
    }
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
    let server = hail::server::start(config).await.unwrap();
    let store = server.state.store.clone();
    let server = TestServer {
        base: format!("http://{}", server.addr),
        server: Some(server),
        http: reqwest::Client::new(),
        dir,
    };
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
    let trip_id = trip["id"].as_str().unwrap();
    let offer = driver_ws.next_of("offer").await;
    ready_becomes(&server, StatusCode::OK).await;

    outage(true);
    ready_becomes(&server, StatusCode::SERVICE_UNAVAILABLE).await;
    let (status, body) = server
        .request(reqwest::Method::GET, "/readyz", None, None)
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("unavailable"))
    );
    let attempts: Vec<(StatusCode, Value)> = vec![
        server
            .post(
                "/v1/trips",
                &waiting.token,
                json!({"pickup": gangnam(), "dropoff": city_hall()}),
            )
            .await,
        server.answer(&driver, &offer, "accept").await,
        server
            .post(
                &format!("/v1/trips/{trip_id}/cancel"),
                &passenger.token,
                json!({}),
            )
            .await,
        server
            .request(
                reqwest::Method::POST,
                "/v1/passengers",
                None,
                Some(json!({"name": "x"})),
            )
            .await,
    ];
    for (status, body) in &attempts {
        assert_eq!(*status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(body["error"]["code"], "unavailable", "{body}");
    }

    outage(false);
    ready_becomes(&server, StatusCode::OK).await;
    // Nothing that was refused happened; everything acknowledged is there.
    let (status, again) = server
        .get(&format!("/v1/trips/{trip_id}"), &passenger.token)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["state"], "requested");
    assert_eq!(server.events(trip_id, &passenger.token, 0).await.len(), 1);
    let (_, snapshot) = server.get("/v1/ops/snapshot", OPERATOR_TOKEN).await;
    assert_eq!(snapshot["trips"].as_array().unwrap().len(), 1);
    // And service resumes without a restart: the trip is dispatched again and accepted.
    let second = server
        .request_trip(&waiting, near_gangnam(50.0), city_hall())
        .await;
    assert_eq!(second["state"], "requested");
    let offer = driver_ws.next_of("offer").await;
    let (status, body) = server.answer(&driver, &offer, "accept").await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// Many clients race on the same trips under SERIALIZABLE isolation (PostgreSQL-wire
/// distributed databases run nothing else): every answer is a success or a conflict,
/// never a server error, and each trip ends with one story and gapless seqs.
async fn racing_clients_under_serializable_isolation(backend: Backend) {
    let server = TestServer::start_with(backend, |_| {}).await;
    if backend == Backend::Postgres {
        use sqlx::Connection;
        let url = &server.server.as_ref().unwrap().state.config.database_url;
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
    let trips: Vec<Value> = futures_util::future::join_all(requests).await;
    // Every driver gets one offer; each accept races its passenger's cancel.
    let mut offers = Vec::new();
    for (account, ws) in drivers.iter_mut() {
        let offer = ws.next_of("offer").await;
        offers.push((account.clone(), offer));
    }
    let trip_owner = |trip_id: &Value| {
        let index = trips.iter().position(|t| t["id"] == *trip_id).unwrap();
        passengers[index].clone()
    };
    let races = offers.iter().map(|(driver, offer)| {
        let owner = trip_owner(&offer["trip_id"]);
        let trip_id = offer["trip_id"].as_str().unwrap().to_string();
        let accept = format!("/v1/offers/{}/accept", offer["offer_id"].as_str().unwrap());
        let server = &server;
        async move {
            let cancel_path = format!("/v1/trips/{trip_id}/cancel");
            let (accepted, cancelled) = tokio::join!(
                server.post(&accept, &driver.token, json!({})),
                server.post(&cancel_path, &owner.token, json!({}))
            );
            (trip_id, owner, accepted, cancelled)
        }
    });
    for (trip_id, owner, accepted, cancelled) in futures_util::future::join_all(races).await {
        for (status, body) in [&accepted, &cancelled] {
            assert!(
                status.is_success() || *status == StatusCode::CONFLICT,
                "{status} {body}"
            );
        }
        assert!(
            cancelled.0.is_success(),
            "a passenger may always cancel before pickup: {}",
            cancelled.1
        );
        let events = server.events(&trip_id, &owner.token, 0).await;
        let seqs: Vec<i64> = events.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
        let names: Vec<&str> = events
            .iter()
            .map(|e| e["event"].as_str().unwrap())
            .collect();
        if accepted.0.is_success() {
            assert_eq!(names, ["requested", "accepted", "cancelled"]);
            assert_eq!(seqs, [1, 2, 3]);
        } else {
            assert_eq!(names, ["requested", "cancelled"]);
            assert_eq!(seqs, [1, 2]);
        }
    }
    let (_, snapshot) = server.get("/v1/ops/snapshot", OPERATOR_TOKEN).await;
    assert_eq!(
        snapshot["stats"]["drivers_busy"], 0,
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
    let one = TestServer {
        base: format!("http://{}", running[0].addr),
        server: None,
        http: reqwest::Client::new(),
        dir: tempfile::tempdir().unwrap(),
    };
    let two = TestServer {
        base: format!("http://{}", running[2].addr),
        server: None,
        http: reqwest::Client::new(),
        dir: tempfile::tempdir().unwrap(),
    };
    let passenger = one.passenger().await;
    let trip = one.request_trip(&passenger, gangnam(), city_hall()).await;
    let (status, seen) = two
        .get(
            &format!("/v1/trips/{}", trip["id"].as_str().unwrap()),
            &passenger.token,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(seen["id"], trip["id"]);
    for server in running {
        server.shutdown().await.unwrap();
    }
}

on_both_stores!(
    store_outage_answers_503_and_recovers,
    racing_clients_under_serializable_isolation,
    nodes_starting_at_once_migrate_safely,
);
