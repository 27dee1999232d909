//! Shared helpers for the integration tests, one way to do each thing: a real server on an
//! ephemeral port with a fresh store (in-process, [`TestServer`], or as a `hail serve`
//! child process, [`HailProcess`]), a NATS server of their own ([`NatsServer`]), and real
//! HTTP and WebSocket clients that speak the typed protocol ([`Client`], [`Ws`]).

#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::{process::Stdio, time::Duration};

use futures_util::{SinkExt, StreamExt};
use hail::{
    config::ServerConfig,
    error::ErrorCode,
    geometry::LatLng,
    protocol::{
        DriverMessage, OfferMessage, ServerMessage, WithdrawReason,
        operators::Snapshot,
        rest::{Credentials, DriverSignup, ErrorBody, PassengerSignup, TripRequest, Vehicle},
    },
    server::Server,
    trip::{Trip, TripEvent},
};
use reqwest::StatusCode;
use serde::{Serialize, de::DeserializeOwned};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    net::TcpStream,
    process::{Child, Command},
};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, tungstenite::Message};

/// How long a test waits for something the server should do promptly. A bound on waiting,
/// not a delay: every wait returns as soon as the awaited message arrives.
pub const PATIENCE: Duration = Duration::from_secs(10);

pub const OPERATOR_TOKEN: &str = "test-operator-token-0123456789";

/// Gangnam station and points around it.
pub fn gangnam() -> LatLng {
    LatLng::new(37.4979, 127.0276).unwrap()
}

pub fn near_gangnam(metres_north: f64) -> LatLng {
    LatLng::new(37.4979 + metres_north / 111_195.0, 127.0276).unwrap()
}

pub fn city_hall() -> LatLng {
    LatLng::new(37.5663, 126.9779).unwrap()
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
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
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
            let name = format!("hail_test_{}", hail::ids::new_id("db").replace("db_", ""));
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

/// An HTTP answer: its status and body.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub body: String,
}

impl Reply {
    /// The body as `T`, after checking the status is `expected`.
    pub fn expect<T: DeserializeOwned>(&self, expected: StatusCode) -> T {
        assert_eq!(self.status, expected, "{}", self.body);
        let body = if self.body.is_empty() {
            "null"
        } else {
            &self.body
        };
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    /// The body as `T` from a 200.
    pub fn ok<T: DeserializeOwned>(&self) -> T {
        self.expect(StatusCode::OK)
    }

    /// The error's code, after checking the status and that the body is our error format
    /// with a message.
    pub fn error(&self, expected: StatusCode) -> ErrorCode {
        let body: ErrorBody = self.expect(expected);
        assert!(!body.error.message.is_empty(), "{}", self.body);
        body.error.code
    }
}

/// A client of one server (or node).
#[derive(Clone)]
pub struct Client {
    pub base: String,
    pub http: reqwest::Client,
}

impl Client {
    pub fn new(base: impl Into<String>) -> Client {
        Client {
            base: base.into(),
            // A stopped server must fail a test, not hang it.
            http: reqwest::Client::builder()
                .timeout(PATIENCE)
                .build()
                .expect("an HTTP client"),
        }
    }

    pub fn ws_base(&self) -> String {
        self.base.replacen("http://", "ws://", 1)
    }

    /// A request with an optional token and JSON body, answered whatever the status.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<&(impl Serialize + ?Sized)>,
    ) -> Reply {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.expect("request sent");
        Reply {
            status: response.status(),
            body: response.text().await.unwrap_or_default(),
        }
    }

    pub async fn get(&self, path: &str, token: &str) -> Reply {
        self.call(reqwest::Method::GET, path, Some(token), None::<&()>)
            .await
    }

    pub async fn post(&self, path: &str, token: &str, body: &(impl Serialize + ?Sized)) -> Reply {
        self.call(reqwest::Method::POST, path, Some(token), Some(body))
            .await
    }

    /// A POST with a raw body (for bad input).
    pub async fn post_raw(&self, path: &str, token: &str, body: impl Into<reqwest::Body>) -> Reply {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(token)
            .header("content-type", "application/json")
            // A server may close a connection whose body it refused to read (413): not
            // one to reuse for the next request.
            .header("connection", "close")
            .body(body)
            .send()
            .await
            .unwrap();
        Reply {
            status: response.status(),
            body: response.text().await.unwrap_or_default(),
        }
    }

    pub async fn passenger(&self) -> Account {
        let signup = PassengerSignup {
            name: "Minji".into(),
        };
        let credentials: Credentials = self
            .call(reqwest::Method::POST, "/v1/passengers", None, Some(&signup))
            .await
            .expect(StatusCode::CREATED);
        Account::from(credentials)
    }

    pub async fn driver(&self) -> Account {
        self.driver_named("Junho", "12가3456").await
    }

    pub async fn driver_named(&self, name: &str, plate: &str) -> Account {
        let signup = DriverSignup {
            name: name.into(),
            vehicle: Vehicle {
                plate: plate.into(),
            },
        };
        let credentials: Credentials = self
            .post("/v1/drivers", OPERATOR_TOKEN, &signup)
            .await
            .expect(StatusCode::CREATED);
        Account::from(credentials)
    }

    /// A driver with an open socket, available at `position`.
    pub async fn online_driver(&self, position: LatLng) -> (Account, Ws) {
        let account = self.driver().await;
        let ws = self.connect_driver(&account, position).await;
        (account, ws)
    }

    /// Opens a driver socket, says `available` and pings `position`.
    pub async fn connect_driver(&self, account: &Account, position: LatLng) -> Ws {
        let mut ws = self.driver_ws(&account.token).await;
        ws.send(&DriverMessage::Status {
            status: hail::fleet::DriverStatus::Available,
        })
        .await;
        ws.send(&DriverMessage::location(position)).await;
        ws.sync().await;
        ws
    }

    pub async fn request_trip(&self, passenger: &Account, pickup: LatLng, dropoff: LatLng) -> Trip {
        self.post(
            "/v1/trips",
            &passenger.token,
            &TripRequest { pickup, dropoff },
        )
        .await
        .expect(StatusCode::CREATED)
    }

    /// The driver answers an offer: `"accept"` or `"decline"`.
    pub async fn answer(&self, driver: &Account, offer: &OfferMessage, answer: &str) -> Reply {
        let path = format!("/v1/offers/{}/{answer}", offer.offer_id);
        self.post(&path, &driver.token, &serde_json::json!({}))
            .await
    }

    /// A ride step by the trip's driver: `arrive`, `start`, `complete`, `cancel`.
    pub async fn step(&self, driver: &Account, trip_id: &str, step: &str) -> Reply {
        let path = format!("/v1/trips/{trip_id}/{step}");
        self.post(&path, &driver.token, &serde_json::json!({}))
            .await
    }

    pub async fn trip(&self, trip_id: &str, token: &str) -> Trip {
        self.get(&format!("/v1/trips/{trip_id}"), token).await.ok()
    }

    pub async fn events(&self, trip_id: &str, token: &str, after: i64) -> Vec<TripEvent> {
        let page: hail::protocol::rest::EventsPage = self
            .get(&format!("/v1/trips/{trip_id}/events?after={after}"), token)
            .await
            .ok();
        page.events
    }

    pub async fn snapshot(&self) -> Snapshot {
        self.get("/v1/ops/snapshot", OPERATOR_TOKEN).await.ok()
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

    pub async fn metrics(&self) -> String {
        self.call(reqwest::Method::GET, "/metrics", None, None::<&()>)
            .await
            .body
    }
}

#[derive(Debug, Clone)]
pub struct Account {
    pub id: String,
    pub token: String,
}

impl From<Credentials> for Account {
    fn from(credentials: Credentials) -> Account {
        Account {
            id: credentials.id,
            token: credentials.token,
        }
    }
}

/// A server running in this process, on an ephemeral port with a fresh store.
pub struct TestServer {
    pub server: Option<Server>,
    pub client: Client,
    pub dir: tempfile::TempDir,
}

impl std::ops::Deref for TestServer {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
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
        TestServer::from_config(config, dir).await
    }

    pub async fn from_config(config: ServerConfig, dir: tempfile::TempDir) -> TestServer {
        let server = hail::server::start(config).await.expect("server starts");
        TestServer {
            client: Client::new(format!("http://{}", server.addr)),
            server: Some(server),
            dir,
        }
    }

    pub fn app(&self) -> &hail::gateway::AppState {
        &self.server.as_ref().expect("running").app
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

/// A WebSocket client reading typed messages: [`ServerMessage`] on driver sockets and trip
/// streams, `OpsMessage` on the operator stream.
pub struct Ws<M = ServerMessage> {
    pub stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Messages that arrived while [`Ws::sync`] waited, handed out first by `next`.
    held: std::collections::VecDeque<M>,
}

impl<M: DeserializeOwned + std::fmt::Debug> Ws<M> {
    pub async fn connect(url: &str) -> Ws<M> {
        let (stream, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("websocket connects");
        Ws {
            stream,
            held: Default::default(),
        }
    }

    pub async fn send(&mut self, message: &impl Serialize) {
        self.send_text(&serde_json::to_string(message).unwrap())
            .await;
    }

    pub async fn send_text(&mut self, text: &str) {
        self.stream
            .send(Message::text(text.to_string()))
            .await
            .unwrap();
    }

    /// The next message, skipping control frames. Panics if none arrives in time.
    pub async fn next(&mut self) -> M {
        self.try_next(PATIENCE)
            .await
            .expect("a message within the patience bound")
    }

    /// The next message, or `None` if the socket closed or nothing came in `wait`.
    pub async fn try_next(&mut self, wait: Duration) -> Option<M> {
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
                    return Some(
                        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}")),
                    );
                }
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => continue,
            }
        }
    }

    /// The first message `pick` takes, skipping others. Panics if none arrives within the
    /// patience bound, however many others do.
    pub async fn next_where<T>(&mut self, what: &str, pick: impl Fn(M) -> Option<T>) -> T {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let wait = deadline.saturating_duration_since(tokio::time::Instant::now());
            let message = self
                .try_next(wait)
                .await
                .unwrap_or_else(|| panic!("no {what} within the patience bound"));
            if let Some(found) = pick(message) {
                return found;
            }
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

    /// The close frame's code, if the server closes the socket within `wait`.
    pub async fn close_code_within(&mut self, wait: Duration) -> Option<u16> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Ok(Some(Ok(Message::Close(frame)))) => return frame.map(|f| f.code.into()),
                Err(_) | Ok(None) => return None,
                Ok(Some(Err(error))) => {
                    eprintln!("socket failed before a close frame: {error}");
                    return None;
                }
                Ok(Some(Ok(_))) => continue,
            }
        }
    }
}

impl Ws<ServerMessage> {
    pub async fn offer(&mut self) -> OfferMessage {
        self.next_where("offer", |m| match m {
            ServerMessage::Offer(offer) => Some(offer),
            _ => None,
        })
        .await
    }

    pub async fn event(&mut self) -> TripEvent {
        self.next_where("trip_event", |m| match m {
            ServerMessage::TripEvent(event) => Some(event),
            _ => None,
        })
        .await
    }

    pub async fn withdrawn(&mut self) -> (String, WithdrawReason) {
        self.next_where("offer_withdrawn", |m| match m {
            ServerMessage::OfferWithdrawn { offer_id, reason } => Some((offer_id, reason)),
            _ => None,
        })
        .await
    }

    /// The next `driver_location`: (trip id, lat, lng).
    pub async fn location(&mut self) -> (String, f64, f64) {
        self.next_where("driver_location", |m| match m {
            ServerMessage::DriverLocation {
                trip_id, lat, lng, ..
            } => Some((trip_id, lat, lng)),
            _ => None,
        })
        .await
    }

    /// The next error message's code.
    pub async fn error(&mut self) -> ErrorCode {
        self.next_where("error", |m| match m {
            ServerMessage::Error { code, .. } => Some(code),
            _ => None,
        })
        .await
    }

    /// Waits until the server has processed everything sent before: a deliberately bad
    /// message is answered with an error, in order, by the socket's single reader.
    pub async fn sync(&mut self) {
        self.send_text(r#"{"type":"sync"}"#).await;
        let mut arrived = std::mem::take(&mut self.held);
        loop {
            match self.next().await {
                ServerMessage::Error {
                    code: ErrorCode::InvalidMessage,
                    ..
                } => {
                    self.held = arrived;
                    return;
                }
                message => arrived.push_back(message),
            }
        }
    }
}

/// A `hail serve` child process, so tests can `kill -9` it, stop it (SIGSTOP) and restart
/// it like a real node.
pub struct HailProcess {
    pub child: Child,
    pub client: Client,
    pub port: u16,
}

impl std::ops::Deref for HailProcess {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

impl HailProcess {
    /// Starts `hail serve` on `port` (0: any) with the store at `database_url` and extra
    /// `HAIL_*` settings, and waits until it listens.
    pub async fn start(port: u16, database_url: &str, settings: &[(&str, String)]) -> HailProcess {
        let mut command = Command::new(env!("CARGO_BIN_EXE_hail"));
        command
            .arg("serve")
            .env("HAIL_LISTEN", format!("127.0.0.1:{port}"))
            .env("HAIL_DATABASE_URL", database_url)
            .env("HAIL_OPERATOR_TOKEN", OPERATOR_TOKEN)
            .env("HAIL_DISPATCH_RETRY_MS", "50")
            .env(
                "HAIL_LOG",
                std::env::var("TEST_HAIL_LOG").unwrap_or("error".into()),
            )
            .stdout(Stdio::piped())
            .kill_on_drop(true);
        for (name, value) in settings {
            command.env(name, value);
        }
        let mut child = command.spawn().expect("hail starts");
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
        let port = address.rsplit(':').next().unwrap().parse().unwrap();
        HailProcess {
            child,
            client: Client::new(address),
            port,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id().expect("running") as i32
    }

    /// `kill -9`, and wait for the process to be gone.
    pub async fn kill(&mut self) {
        self.child.start_kill().expect("SIGKILL sent");
        let _ = self.child.wait().await;
    }

    /// SIGSTOP (`pause = true`) or SIGCONT: a process that stops without dying, as a long
    /// stall or a partition would look to its peers.
    pub fn pause(&self, pause: bool) {
        let signal = if pause { "-STOP" } else { "-CONT" };
        let status = std::process::Command::new("kill")
            .arg(signal)
            .arg(self.pid().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    /// SIGTERM, and the exit status.
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        let status = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success());
        tokio::time::timeout(PATIENCE, self.child.wait())
            .await
            .expect("hail exits in time")
            .unwrap()
    }
}

/// A port nobody listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A NATS server of the test's own on a free port (the machine's `nats-server`, or one on
/// the PATH).
pub struct NatsServer {
    child: Child,
    pub port: u16,
}

impl NatsServer {
    pub async fn start() -> NatsServer {
        NatsServer::start_on(free_port()).await
    }

    pub async fn start_on(port: u16) -> NatsServer {
        NatsServer::spawn(port, &[]).await
    }

    /// One server of a NATS cluster: `cluster_port` for its routes, `route` to a peer.
    pub async fn start_routed(cluster_port: u16, route: &str) -> NatsServer {
        let cluster = format!("nats://127.0.0.1:{cluster_port}");
        NatsServer::spawn(
            free_port(),
            &[
                "--cluster_name",
                "hail",
                "--cluster",
                &cluster,
                "--routes",
                route,
            ],
        )
        .await
    }

    async fn spawn(port: u16, extra: &[&str]) -> NatsServer {
        let binary = ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
            .into_iter()
            .find(|path| std::path::Path::new(path).exists())
            .unwrap_or("nats-server");
        let child = Command::new(binary)
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("nats-server starts (the test command installs it)");
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "nats-server listens"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        NatsServer { child, port }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub async fn kill(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
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

/// Polls `check` until it returns `Some`, within the patience bound.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(found) = check().await {
            return found;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within the patience bound"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
