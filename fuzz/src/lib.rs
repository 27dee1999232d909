//! What hail's fuzz targets share: one real hail server per fuzzing process — its router,
//! store (SQLite in memory), fleet and dispatcher — with a passenger, a driver on line and
//! a waiting trip to act on, and the contract every answer must keep.
//!
//! Requests go through the router in process (no socket), so a run makes millions of
//! them; the server's own tasks (dispatch, lease, sweep) run whenever a request does.

use std::sync::OnceLock;

use axum::{
    Router,
    body::Body,
    http::{Request, Response, StatusCode},
};
use hail::{
    config::ServerConfig,
    fleet::DriverKey,
    gateway::{self, AppState},
    protocol::rest::{Credentials, ErrorBody},
    server::{self, Server},
    trip::Trip,
};
use http_body_util::BodyExt;
use tokio::runtime::Runtime;
use tower::ServiceExt;

pub const OPERATOR: &str = "fuzz-operator-token-0123456789";

pub struct Harness {
    pub runtime: Runtime,
    pub router: Router,
    pub passenger: Credentials,
    pub driver: Credentials,
    /// The driver's key in the fleet: it is connected, as if its socket were open.
    pub driver_key: Option<DriverKey>,
    /// A trip of the passenger's, waiting when the run starts (the fuzzer may cancel it).
    pub trip: String,
    server: Server,
}

/// The process's server, started on first use.
pub fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(Harness::start)
}

impl Harness {
    fn start() -> Harness {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        // One connection: an in-memory SQLite database lives as long as its connection.
        let mut config = ServerConfig::new("127.0.0.1:0".parse().unwrap(), "sqlite::memory:");
        config.db_max_connections = 1;
        config.operator_token = Some(OPERATOR.to_string());
        // The fuzzer is one client sending as fast as it can: rate limits would answer
        // nearly everything with 429 and hide the handlers behind them.
        config.limits.signup_limit_per_min = u32::MAX;
        config.limits.trip_request_limit_per_min = u32::MAX;
        config.limits.write_limit_per_min = u32::MAX;
        let server = runtime
            .block_on(server::start(config))
            .expect("the server starts");
        let router = gateway::router(server.app.clone(), true);
        let mut harness = Harness {
            runtime,
            router,
            passenger: placeholder(),
            driver: placeholder(),
            driver_key: None,
            trip: String::new(),
            server,
        };
        harness.passenger = harness.created("/v1/passengers", None, r#"{"name":"Fuzz"}"#);
        harness.driver = harness.created(
            "/v1/drivers",
            Some(OPERATOR),
            r#"{"name":"Fuzz","vehicle":{"plate":"12가3456"}}"#,
        );
        harness.driver_key = Some(harness.server.app.rides.driver_connected(
            &harness.driver.id,
            None,
            tokio::time::Instant::now(),
        ));
        let trip: Trip = harness.created(
            "/v1/trips",
            Some(&harness.passenger.token.clone()),
            r#"{"pickup":{"lat":37.4979,"lng":127.0276},"dropoff":{"lat":37.5665,"lng":126.978}}"#,
        );
        harness.trip = trip.id;
        harness
    }

    pub fn app(&self) -> &AppState {
        &self.server.app
    }

    fn created<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        token: Option<&str>,
        body: &str,
    ) -> T {
        let mut request = Request::post(path).header("content-type", "application/json");
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let request = request.body(Body::from(body.to_string())).unwrap();
        let (status, body) = self.send(request);
        assert_eq!(
            status,
            StatusCode::CREATED,
            "{}",
            String::from_utf8_lossy(&body)
        );
        serde_json::from_slice(&body).expect("the contract's answer")
    }

    /// Sends one request through the router and checks what every answer must be: never a
    /// server error, and every error in the error format.
    pub fn send(&self, request: Request<Body>) -> (StatusCode, Vec<u8>) {
        let response = self
            .runtime
            .block_on(self.router.clone().oneshot(request))
            .expect("the router is infallible");
        let (status, body) = self.runtime.block_on(read(response));
        assert!(
            status != StatusCode::INTERNAL_SERVER_ERROR,
            "a 500: {}",
            String::from_utf8_lossy(&body)
        );
        if status.is_client_error() || status.is_server_error() {
            let error: ErrorBody = serde_json::from_slice(&body).unwrap_or_else(|_| {
                panic!(
                    "a {status} outside the error format: {}",
                    String::from_utf8_lossy(&body)
                )
            });
            assert!(
                !error.error.message.is_empty(),
                "an error says what is wrong"
            );
        }
        (status, body)
    }
}

async fn read(response: Response<Body>) -> (StatusCode, Vec<u8>) {
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map(|collected| collected.to_bytes().to_vec())
        .unwrap_or_default();
    (status, body)
}

fn placeholder() -> Credentials {
    Credentials {
        id: String::new(),
        token: String::new(),
    }
}
