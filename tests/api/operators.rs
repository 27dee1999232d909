//! Operators are people (issue 10): tokens of their own from `hail operator`, their name
//! on what they do, revocation that takes effect at once — and the single-use tickets the
//! console opens its socket with, so no long-lived token goes into a URL.

use hail::{
    protocol::{
        operators::{OpsMessage, Snapshot},
        rest::{CancelRequest, SocketTicket},
    },
    trip::{EventKind, Role, Timestamp},
};
use reqwest::StatusCode;

use crate::common::*;

/// `hail operator …` on the store at `database_url`: (succeeded, stdout, stderr).
async fn hail_operator(database_url: &str, args: &[&str]) -> (bool, String, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_hail"))
        .arg("operator")
        .args(args)
        .env("HAIL_DATABASE_URL", database_url)
        .env("HAIL_LOG", "warn")
        .output()
        .await
        .expect("hail runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).trim().to_string(),
        String::from_utf8_lossy(&output.stderr).trim().to_string(),
    )
}

/// A server and the address of its store, for the command line to share.
async fn server_and_store(backend: Backend) -> (TestServer, String) {
    let mut database_url = String::new();
    let server = TestServer::start_with(backend, |c| database_url = c.database_url.clone()).await;
    (server, database_url)
}

async fn ticket(server: &TestServer, token: &str) -> String {
    let reply = server
        .call(
            reqwest::Method::POST,
            "/v1/ops/tickets",
            Some(token),
            None::<&()>,
        )
        .await;
    let ticket: SocketTicket = reply.expect(StatusCode::CREATED);
    let ttl = ticket.expires_at.millis() - Timestamp::now().millis();
    assert!((25_000..=30_000).contains(&ttl), "good for 30 s: {ttl} ms");
    ticket.ticket
}

/// The HTTP status a refused operator-stream handshake got.
async fn refused(url: String) -> u16 {
    let error = tokio_tungstenite::connect_async(url)
        .await
        .expect_err("refused");
    let tokio_tungstenite::tungstenite::Error::Http(response) = error else {
        panic!("{error:?}")
    };
    response.status().as_u16()
}

async fn watch(server: &TestServer, ticket: &str) -> Ws<OpsMessage> {
    let mut ops: Ws<OpsMessage> =
        Ws::connect(&format!("{}/v1/ops/ws?ticket={ticket}", server.ws_base())).await;
    ops.next_where("snapshot", |m| match m {
        OpsMessage::Snapshot(snapshot) => Some(snapshot),
        _ => None,
    })
    .await;
    ops
}

async fn operators_are_people(backend: Backend) {
    let (server, store) = server_and_store(backend).await;

    let (ok, alice, note) = hail_operator(&store, &["add", "alice"]).await;
    assert!(ok, "{note}");
    assert_eq!(alice.len(), 64, "the token alone on stdout: {alice:?}");
    assert!(note.contains("shown only this once"), "{note}");
    let _: Snapshot = server.get("/v1/ops/snapshot", &alice).await.ok();

    // What alice does carries her name; the bootstrap token stays "operator".
    let passenger = server.passenger().await;
    let trip = server
        .request_trip(&passenger, gangnam(), city_hall())
        .await;
    let path = format!("/v1/trips/{}/cancel", trip.id);
    let reason = CancelRequest {
        reason: Some("duplicate booking".into()),
    };
    let reply = server.post(&path, &alice, &reason).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let events = server.events(&trip.id, OPERATOR_TOKEN, 0).await;
    let cancelled = events.last().unwrap();
    assert_eq!(cancelled.event, EventKind::Cancelled);
    assert_eq!(cancelled.actor.role, Role::Operator);
    assert_eq!(cancelled.actor.id.as_deref(), Some("alice"));

    // Bad names, a name taken, the bootstrap's name, an unknown operator: refused, and
    // nothing changes.
    for (args, says) in [
        (vec!["add", "alice"], "exists already"),
        (vec!["add", "operator"], "bootstrap"),
        (vec!["add", "bad name!"], "not an operator name"),
        (vec!["add", ""], "not an operator name"),
        (vec!["revoke", "nobody"], "no operator"),
    ] {
        let (ok, out, error) = hail_operator(&store, &args).await;
        assert!(!ok && out.is_empty(), "{args:?} refused");
        assert!(error.contains(says), "{args:?}: {error}");
    }
    let (_, list, _) = hail_operator(&store, &["list"]).await;
    assert_eq!(list.lines().count(), 1, "{list}");
    assert!(
        list.starts_with("alice\t") && list.ends_with("active"),
        "{list}"
    );
    let _: Snapshot = server.get("/v1/ops/snapshot", &alice).await.ok();

    // Revoked: her next request is refused, and her open console is closed.
    let mut console = watch(&server, &ticket(&server, &alice).await).await;
    let spare = ticket(&server, &alice).await;
    let (ok, _, note) = hail_operator(&store, &["revoke", "alice"]).await;
    assert!(ok, "{note}");
    let reply = server.get("/v1/ops/snapshot", &alice).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{}", reply.body);
    assert_eq!(
        console
            .close_code_within(std::time::Duration::from_secs(5))
            .await,
        Some(1008),
        "an open console is cut off too"
    );
    let url = format!("{}/v1/ops/ws?ticket={spare}", server.ws_base());
    assert_eq!(
        refused(url).await,
        401,
        "her unused tickets went with her token"
    );
    let (_, list, _) = hail_operator(&store, &["list"]).await;
    assert!(list.contains("revoked 20"), "{list}");
    // Her events keep her name.
    let events = server.events(&trip.id, OPERATOR_TOKEN, 0).await;
    assert_eq!(events.last().unwrap().actor.id.as_deref(), Some("alice"));

    // Added again: a new token; the old one stays dead.
    let (ok, again, _) = hail_operator(&store, &["add", "alice"]).await;
    assert!(ok && again != alice);
    let _: Snapshot = server.get("/v1/ops/snapshot", &again).await.ok();
    let reply = server.get("/v1/ops/snapshot", &alice).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
}

async fn console_tickets_are_single_use_and_short_lived(backend: Backend) {
    let server = TestServer::start(backend).await;
    let passenger = server.passenger().await;

    let first = ticket(&server, OPERATOR_TOKEN).await;
    let _console = watch(&server, &first).await;
    let url = |ticket: &str| format!("{}/v1/ops/ws?ticket={ticket}", server.ws_base());
    assert_eq!(refused(url(&first)).await, 401, "used once");

    // Only operators get tickets.
    let reply = server
        .call(
            reqwest::Method::POST,
            "/v1/ops/tickets",
            Some(&passenger.token),
            None::<&()>,
        )
        .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    let reply = server
        .call(reqwest::Method::POST, "/v1/ops/tickets", None, None::<&()>)
        .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);

    // Made-up, empty, oversized and expired tickets are refused.
    let expired = server
        .app()
        .rides
        .store
        .issue_ticket("operator", Timestamp(Timestamp::now().millis() - 1))
        .await
        .unwrap();
    for bad in ["nope".to_string(), String::new(), "x".repeat(300), expired] {
        assert_eq!(refused(url(&bad)).await, 401, "{bad:?}");
    }

    // A ticket opens the operator stream, nothing else.
    let spent = ticket(&server, OPERATOR_TOKEN).await;
    let driver = format!("{}/v1/driver/ws?ticket={spent}", server.ws_base());
    assert_eq!(refused(driver).await, 403);
}

crate::on_both_stores!(
    operators_are_people,
    console_tickets_are_single_use_and_short_lived,
);
