//! Shared helpers for the integration tests: a real server on an ephemeral port with a
//! fresh store, and real HTTP and WebSocket clients.

#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hail::{config::ServerConfig, server::Server};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, tungstenite::Message};

/// How long a test waits for something the server should do promptly. A bound on waiting,
/// not a delay: every wait returns as soon as the awaited message arrives.
pub const PATIENCE: Duration = Duration::from_secs(10);

pub const OPERATOR_TOKEN: &str = "test-operator-token-0123456789";

/// Gangnam station and points around it.
pub fn gangnam() -> Value {
    json!({"lat": 37.4979, "lng": 127.0276})
}

pub fn near_gangnam(metres_north: f64) -> Value {
    json!({"lat": 37.4979 + metres_north / 111_195.0, "lng": 127.0276})
}

pub fn city_hall() -> Value {
    json!({"lat": 37.5663, "lng": 126.9779})
}

pub struct TestServer {
    pub server: Option<Server>,
    pub base: String,
    pub http: reqwest::Client,
    pub dir: tempfile::TempDir,
}

#[derive(Debug, Clone)]
pub struct Account {
    pub id: String,
    pub token: String,
}

/// Which store a test runs on. Every integration test runs on both (see
/// [`on_both_stores!`]); PostgreSQL only where `HAIL_TEST_POSTGRES_URL` names a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Generates, for each named `async fn(Backend)`, a test on SQLite and one on PostgreSQL.
/// Without `HAIL_TEST_POSTGRES_URL` at build time the PostgreSQL ones are listed as
/// ignored with the reason, so a run never passes off PostgreSQL as tested when it was not.
#[macro_export]
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name($crate::common::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                #[cfg_attr(not(hail_test_postgres), ignore = "PostgreSQL not tested: set HAIL_TEST_POSTGRES_URL")]
                async fn $name() {
                    super::$name($crate::common::Backend::Postgres).await
                }
            )*
        }
    };
}

/// The PostgreSQL server the tests may create databases on.
pub fn postgres_admin_url() -> String {
    std::env::var("HAIL_TEST_POSTGRES_URL")
        .ok()
        .filter(|url| !url.is_empty())
        .expect("HAIL_TEST_POSTGRES_URL names the PostgreSQL server for the PostgreSQL tests")
}

/// A fresh, empty store: a file in `dir`, or a new database on the PostgreSQL server.
/// Test databases are named `hail_test_*`; `.ci/run` drops old ones before a run.
pub async fn fresh_database(backend: Backend, dir: &tempfile::TempDir) -> String {
    match backend {
        Backend::Sqlite => format!("sqlite://{}", dir.path().join("hail.db").display()),
        Backend::Postgres => {
            use sqlx::Connection;
            let admin = postgres_admin_url();
            let name = format!("hail_test_{}", hail::store::new_id("db").replace("db_", ""));
            let mut connection = sqlx::PgConnection::connect(&admin)
                .await
                .expect("PostgreSQL reachable");
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .execute(&mut connection)
                .await
                .expect("test database created");
            with_database(&admin, &name)
        }
    }
}

/// `url` with its database replaced by `name`.
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let host_end = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    let mut out = format!("{}/{name}", &base[..host_end]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

pub async fn test_config(backend: Backend, dir: &tempfile::TempDir) -> ServerConfig {
    let url = fresh_database(backend, dir).await;
    let mut config = ServerConfig::new("127.0.0.1:0".parse().unwrap(), url);
    config.operator_token = Some(OPERATOR_TOKEN.to_string());
    config.dispatch.dispatch_retry_ms = 50;
    config
}

impl TestServer {
    pub async fn start(backend: Backend) -> TestServer {
        TestServer::start_with(backend, |_| {}).await
    }

    pub async fn start_with(
        backend: Backend,
        adjust: impl FnOnce(&mut ServerConfig),
    ) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config(backend, &dir).await;
        adjust(&mut config);
        let server = hail::server::start(config).await.expect("server starts");
        TestServer {
            base: format!("http://{}", server.addr),
            server: Some(server),
            http: reqwest::Client::new(),
            dir,
        }
    }

    pub fn ws_base(&self) -> String {
        self.base.replacen("http://", "ws://", 1)
    }

    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request sent");
        let status = response.status();
        let text = response.text().await.unwrap();
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, value)
    }

    pub async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.request(reqwest::Method::GET, path, Some(token), None)
            .await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.request(reqwest::Method::POST, path, Some(token), Some(body))
            .await
    }

    pub async fn passenger(&self) -> Account {
        let (status, body) = self
            .request(
                reqwest::Method::POST,
                "/v1/passengers",
                None,
                Some(json!({"name": "Minji"})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        Account {
            id: body["id"].as_str().unwrap().into(),
            token: body["token"].as_str().unwrap().into(),
        }
    }

    pub async fn driver(&self) -> Account {
        let (status, body) = self
            .post(
                "/v1/drivers",
                OPERATOR_TOKEN,
                json!({"name": "Junho", "vehicle": {"plate": "12가3456"}}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        Account {
            id: body["id"].as_str().unwrap().into(),
            token: body["token"].as_str().unwrap().into(),
        }
    }

    /// A driver with an open socket, available at `position`.
    pub async fn online_driver(&self, position: Value) -> (Account, Ws) {
        let account = self.driver().await;
        let ws = self.connect_driver(&account, position).await;
        (account, ws)
    }

    /// Opens a driver socket, says `available` and pings `position`.
    pub async fn connect_driver(&self, account: &Account, position: Value) -> Ws {
        let mut ws = self.driver_ws(&account.token).await;
        ws.send(json!({"type": "status", "status": "available"}))
            .await;
        ws.send(json!({"type": "location", "lat": position["lat"], "lng": position["lng"]}))
            .await;
        ws.sync().await;
        ws
    }

    pub async fn request_trip(&self, passenger: &Account, pickup: Value, dropoff: Value) -> Value {
        let (status, trip) = self
            .post(
                "/v1/trips",
                &passenger.token,
                json!({"pickup": pickup, "dropoff": dropoff}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{trip}");
        trip
    }

    /// The driver answers an offer it received: `"accept"` or `"decline"`.
    pub async fn answer(
        &self,
        driver: &Account,
        offer: &Value,
        answer: &str,
    ) -> (StatusCode, Value) {
        let offer_id = offer["offer_id"].as_str().expect("an offer message");
        self.post(
            &format!("/v1/offers/{offer_id}/{answer}"),
            &driver.token,
            json!({}),
        )
        .await
    }

    pub async fn driver_ws(&self, token: &str) -> Ws {
        Ws::connect(&format!("{}/v1/driver/ws?token={token}", self.ws_base())).await
    }

    pub async fn trip_ws(&self, trip_id: &str, token: &str, after: i64) -> Ws {
        Ws::connect(&format!(
            "{}/v1/trips/{trip_id}/ws?after={after}&token={token}",
            self.ws_base()
        ))
        .await
    }

    pub async fn events(&self, trip_id: &str, token: &str, after: i64) -> Vec<Value> {
        let (status, body) = self
            .get(&format!("/v1/trips/{trip_id}/events?after={after}"), token)
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["events"].as_array().unwrap().clone()
    }

    pub async fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await.unwrap();
        }
    }

    /// Stops the server (if running) and starts a new one at the same address on the
    /// same SQLite store: a node restarting in place, so clients that reconnect find it
    /// where it was.
    pub async fn restart_in_place(&mut self) {
        let address: std::net::SocketAddr = self
            .base
            .trim_start_matches("http://")
            .parse()
            .expect("the base URL names the address");
        self.stop().await;
        let mut config = test_config(Backend::Sqlite, &self.dir).await;
        config.listen = address;
        let server = hail::server::start(config)
            .await
            .expect("server restarts on its address");
        self.server = Some(server);
    }
}

pub struct Ws {
    pub stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Messages that arrived while [`Ws::sync`] waited, handed out first by `next`.
    held: std::collections::VecDeque<Value>,
}

impl Ws {
    pub async fn connect(url: &str) -> Ws {
        let (stream, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("websocket connects");
        Ws {
            stream,
            held: Default::default(),
        }
    }

    pub async fn send(&mut self, value: Value) {
        self.stream
            .send(Message::text(value.to_string()))
            .await
            .unwrap();
    }

    pub async fn send_text(&mut self, text: &str) {
        self.stream
            .send(Message::text(text.to_string()))
            .await
            .unwrap();
    }

    /// The next JSON message, skipping control frames. Panics if none arrives in time.
    pub async fn next(&mut self) -> Value {
        self.try_next(PATIENCE)
            .await
            .expect("a message within the patience bound")
    }

    /// The next JSON message, or `None` if the socket closed or nothing came in `wait`.
    pub async fn try_next(&mut self, wait: Duration) -> Option<Value> {
        if let Some(message) = self.held.pop_front() {
            return Some(message);
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.stream.next())
                .await
                .ok()??;
            match frame {
                Ok(Message::Text(text)) => {
                    return Some(serde_json::from_str(&text).expect("JSON message"));
                }
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => continue,
            }
        }
    }

    /// The next message of `kind`, skipping others (e.g. `driver_location`). Panics if
    /// none arrives within the patience bound, however many others do.
    pub async fn next_of(&mut self, kind: &str) -> Value {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let wait = deadline.saturating_duration_since(tokio::time::Instant::now());
            let message = self.try_next(wait).await;
            let message =
                message.unwrap_or_else(|| panic!("no {kind} message within the patience bound"));
            if message["type"] == kind {
                return message;
            }
        }
    }

    /// Waits until the server has processed everything sent before: a deliberately bad
    /// message is answered with an error, in order, by the socket's single reader.
    pub async fn sync(&mut self) {
        self.send(json!({"type": "sync"})).await;
        let mut arrived = std::mem::take(&mut self.held);
        loop {
            let message = self.next().await;
            if message["type"] == "error" && message["code"] == "invalid_message" {
                self.held = arrived;
                return;
            }
            arrived.push_back(message);
        }
    }

    /// True if the server closed the socket (or it failed) within `wait`.
    pub async fn closed_within(&mut self, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Err(_) => return false,
                Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(Message::Close(_)))) => return true,
                Ok(Some(Ok(_))) => continue,
            }
        }
    }
}

/// A TCP gate between hail and its PostgreSQL server: while shut, it cuts every open
/// connection and refuses new ones, as a failed or partitioned database host would.
pub struct Gate {
    pub port: u16,
    open: std::sync::Arc<std::sync::atomic::AtomicBool>,
    cut: tokio::sync::watch::Sender<u64>,
}

impl Gate {
    pub async fn start(target: std::net::SocketAddr) -> Gate {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let open = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (cut, cuts) = tokio::sync::watch::channel(0u64);
        let gate_open = open.clone();
        tokio::spawn(async move {
            while let Ok((mut incoming, _)) = listener.accept().await {
                if !gate_open.load(Ordering::SeqCst) {
                    continue; // dropped: the client sees its connection reset
                }
                let mut cuts = cuts.clone();
                cuts.mark_unchanged();
                tokio::spawn(async move {
                    let Ok(mut outgoing) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut incoming, &mut outgoing) => {}
                        _ = cuts.changed() => {}
                    }
                });
            }
        });
        Gate { port, open, cut }
    }

    pub fn shut(&self) {
        self.open.store(false, std::sync::atomic::Ordering::SeqCst);
        self.cut.send_modify(|generation| *generation += 1);
    }

    pub fn reopen(&self) {
        self.open.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// `url` with its host and port replaced by 127.0.0.1:`port`.
pub fn through_port(url: &str, port: u16) -> String {
    let scheme_end = url.find("://").unwrap() + 3;
    let authority_end = url[scheme_end..]
        .find('/')
        .map_or(url.len(), |i| scheme_end + i);
    let authority = &url[scheme_end..authority_end];
    let user = authority
        .rsplit_once('@')
        .map(|(user, _)| format!("{user}@"))
        .unwrap_or_default();
    format!(
        "{}{user}127.0.0.1:{port}{}",
        &url[..scheme_end],
        &url[authority_end..]
    )
}

/// The host:port a PostgreSQL URL points at.
pub fn postgres_address(url: &str) -> std::net::SocketAddr {
    let scheme_end = url.find("://").unwrap() + 3;
    let authority_end = url[scheme_end..]
        .find('/')
        .map_or(url.len(), |i| scheme_end + i);
    let host_port = url[scheme_end..authority_end].rsplit('@').next().unwrap();
    let host_port = if host_port.contains(':') {
        host_port.to_string()
    } else {
        format!("{host_port}:5432")
    };
    let host_port = host_port.replace("localhost", "127.0.0.1");
    host_port
        .parse()
        .expect("PostgreSQL test URL names an IP address and port")
}
