//! Invariant 3: after `kill -9` and a restart every acknowledged change is there, and
//! dispatch picks up where it stopped. The server runs as a real child process.

mod common;

use std::process::Stdio;

use common::*;
use reqwest::StatusCode;
use serde_json::json;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

/// Starts `hail serve` on the store at `database_url` and returns it with its base URL.
async fn spawn_hail(database_url: &str) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_hail"))
        .arg("serve")
        .env("HAIL_LISTEN", "127.0.0.1:0")
        .env("HAIL_DATABASE_URL", database_url)
        .env("HAIL_OPERATOR_TOKEN", OPERATOR_TOKEN)
        .env("HAIL_DISPATCH_RETRY_MS", "50")
        .env(
            "HAIL_LOG",
            std::env::var("TEST_HAIL_LOG").unwrap_or("warn".into()),
        )
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("hail starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let address = tokio::time::timeout(PATIENCE, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(address) = line.strip_prefix("hail listening on ") {
                return address.to_string();
            }
        }
        panic!("hail exited before listening");
    })
    .await
    .expect("hail listens in time");
    (child, address)
}

fn client(base: &str, dir: &tempfile::TempDir) -> TestServer {
    TestServer {
        server: None,
        base: base.to_string(),
        http: reqwest::Client::new(),
        dir: tempfile::tempdir_in(dir.path()).unwrap(),
    }
}

async fn kill_9_loses_nothing_acknowledged_and_dispatch_resumes(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let database_url = fresh_database(backend, &dir).await;
    let (mut child, base) = spawn_hail(&database_url).await;
    let before = client(&base, &dir);

    let rider = before.passenger().await;
    let waiting = before.passenger().await;
    let (driver, mut driver_ws) = before.online_driver(near_gangnam(100.0)).await;
    let riding = before.request_trip(&rider, gangnam(), city_hall()).await;
    let riding_id = riding["id"].as_str().unwrap().to_string();
    let offer = driver_ws.next_of("offer").await;
    let (status, _) = before.answer(&driver, &offer, "accept").await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = before
        .post(
            &format!("/v1/trips/{riding_id}/arrive"),
            &driver.token,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    // A second trip, offered to a second driver who has not answered when the node dies.
    let (late, mut late_ws) = before.online_driver(near_gangnam(500.0)).await;
    let open = before.request_trip(&waiting, gangnam(), city_hall()).await;
    let open_id = open["id"].as_str().unwrap().to_string();
    let stale_offer = late_ws.next_of("offer").await;
    assert_eq!(stale_offer["trip_id"], open_id.as_str());

    child.kill().await.unwrap(); // SIGKILL
    drop((driver_ws, late_ws));

    let (mut child, base) = spawn_hail(&database_url).await;
    let after = client(&base, &dir);
    // Every acknowledged change is there, with gapless seqs.
    let (status, trip) = after
        .get(&format!("/v1/trips/{riding_id}"), &rider.token)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(trip["state"], "arrived");
    assert_eq!(trip["driver_id"], driver.id.as_str());
    let events = after.events(&riding_id, &rider.token, 0).await;
    let seqs: Vec<i64> = events.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, [1, 2, 3]);
    let (_, trip) = after
        .get(&format!("/v1/trips/{open_id}"), &waiting.token)
        .await;
    assert_eq!(trip["state"], "requested");

    // The offer made before the crash is void.
    let (status, _) = after.answer(&late, &stale_offer, "accept").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Drivers re-ping: the busy one stays on its trip, the free one gets the open trip.
    let mut driver_ws = after.connect_driver(&driver, near_gangnam(100.0)).await;
    let mut late_ws = after.connect_driver(&late, near_gangnam(500.0)).await;
    let offer = late_ws.next_of("offer").await;
    assert_eq!(offer["trip_id"], open_id.as_str());
    let (status, _) = after.answer(&late, &offer, "accept").await;
    assert_eq!(status, StatusCode::OK);
    for step in ["start", "complete"] {
        let (status, body) = after
            .post(
                &format!("/v1/trips/{riding_id}/{step}"),
                &driver.token,
                json!({}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    assert!(
        driver_ws
            .try_next(std::time::Duration::from_millis(200))
            .await
            .is_none_or(|m| m["type"] != "offer")
    );
    let (_, trip) = after
        .get(&format!("/v1/trips/{riding_id}"), &rider.token)
        .await;
    assert_eq!(trip["state"], "completed");
    assert!(trip["fare"]["amount"].as_i64().unwrap() >= 4_800);
    child.kill().await.unwrap();
}

async fn sigterm_drains_and_exits_cleanly(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let database_url = fresh_database(backend, &dir).await;
    let (mut child, base) = spawn_hail(&database_url).await;
    let server = client(&base, &dir);
    let passenger = server.passenger().await;
    let trip = server
        .request_trip(&passenger, gangnam(), city_hall())
        .await;
    let mut stream = server
        .trip_ws(trip["id"].as_str().unwrap(), &passenger.token, 1)
        .await;
    let pid = child.id().unwrap().to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(
        stream.closed_within(PATIENCE).await,
        "sockets are closed on shutdown"
    );
    let exit = tokio::time::timeout(PATIENCE, child.wait())
        .await
        .expect("exits in time")
        .unwrap();
    assert!(exit.success(), "{exit:?}");

    // Nothing acknowledged was lost across the clean restart either.
    let (_child, base) = spawn_hail(&database_url).await;
    let after = client(&base, &dir);
    let (status, again) = after
        .get(
            &format!("/v1/trips/{}", trip["id"].as_str().unwrap()),
            &passenger.token,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["state"], "requested");
}

on_both_stores!(
    kill_9_loses_nothing_acknowledged_and_dispatch_resumes,
    sigterm_drains_and_exits_cleanly,
);
