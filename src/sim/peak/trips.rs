//! The rides of `hail peak`: passengers' requests sent on a fixed schedule, the offered
//! drivers' answers and ride steps, when each request was sent and its first offer read,
//! and every failure by kind.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use rand::{RngExt, SeedableRng, rngs::StdRng};
use serde::Serialize;
use tokio::{
    sync::{Semaphore, mpsc, watch},
    task::JoinSet,
    time::Instant,
};

use super::super::load::{
    fleet::{OfferFrame, add, get},
    random_point_in_seoul,
};
use crate::{
    geometry::LatLng,
    protocol::{
        ServerMessage,
        rest::{Credentials, PassengerSignup, TripRequest},
    },
    trip::Trip,
};

/// HTTP requests under way at once. Each holds a connection, so a file on both sides:
/// at the open-file limit this is what is left beside the driver sockets.
pub(super) const IN_FLIGHT: usize = 128;
/// Sign-ups under way at once, before the run.
const SIGNING_UP: usize = 32;
/// A request sent later than this after it was due counts as late (the generator's lag).
const LATE: Duration = Duration::from_millis(10);
/// How long the end of a run waits for the rides' requests under way to be answered
/// before it cuts them off.
const STOP_PATIENCE: Duration = Duration::from_secs(5);

/// Each failure, counted by kind (`"POST /v1/trips: 503 not_ready"`, …).
#[derive(Default)]
pub(super) struct Errors(Mutex<BTreeMap<String, u64>>);

impl Errors {
    pub fn note(&self, kind: impl Into<String>) {
        self.note_many(&kind.into(), 1);
    }

    pub fn note_many(&self, kind: &str, count: u64) {
        if count > 0 {
            *self.0.lock().unwrap().entry(kind.to_string()).or_default() += count;
        }
    }

    pub fn take(&self) -> BTreeMap<String, u64> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

/// How an offered driver behaves.
pub(super) struct Steps {
    pub think: Duration,
    pub ride_step: Duration,
}

/// What the rides came to.
pub(super) struct Outcome {
    pub sent: u64,
    pub requested: u64,
    pub unoffered: u64,
    pub accepted: u64,
    pub completed: u64,
    pub late: u64,
    /// Request → first offer of every trip that had both, sorted.
    pub latencies_ms: Vec<f64>,
}

/// When a trip's request was sent, when its first offer was read.
type Timing = (Option<Instant>, Option<Instant>);

pub(super) struct Trips {
    http: reqwest::Client,
    base: String,
    /// By the driver index an offer frame carries.
    driver_tokens: Vec<String>,
    steps: Steps,
    errors: Arc<Errors>,
    /// Per trip: when its request was sent (known once the server answers with its id)
    /// and when its first offer was read (which may come before that answer).
    timing: Mutex<HashMap<String, Timing>>,
    in_flight: Semaphore,
    /// Requests and rides under way; std's mutex: held only to spawn or take.
    tasks: Mutex<JoinSet<()>>,
    /// Set when the run ends: rides stop between their steps, not in the middle of a
    /// request, so what they counted is what the server did.
    stop: watch::Sender<bool>,
    posting: AtomicU64,
    sent: AtomicU64,
    requested: AtomicU64,
    late: AtomicU64,
    accepted: AtomicU64,
    completed: AtomicU64,
}

impl Trips {
    pub fn new(
        http: reqwest::Client,
        base: String,
        driver_tokens: Vec<String>,
        steps: Steps,
        errors: Arc<Errors>,
    ) -> Trips {
        Trips {
            http,
            base,
            driver_tokens,
            steps,
            errors,
            timing: Mutex::default(),
            in_flight: Semaphore::new(IN_FLIGHT),
            tasks: Mutex::default(),
            stop: watch::Sender::new(false),
            posting: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            requested: AtomicU64::new(0),
            late: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            completed: AtomicU64::new(0),
        }
    }

    /// One passenger account per request, so none has an active trip when it asks.
    pub async fn sign_up(&self, count: usize) -> anyhow::Result<Vec<String>> {
        let limit = Arc::new(Semaphore::new(SIGNING_UP));
        let mut signups = JoinSet::new();
        for index in 0..count {
            let (http, limit) = (self.http.clone(), limit.clone());
            let url = format!("{}/v1/passengers", self.base);
            signups.spawn(async move {
                let _permit = limit.acquire().await;
                let signup = PassengerSignup {
                    name: format!("Peak passenger {index}"),
                };
                let response = http.post(&url).json(&signup).send().await?;
                anyhow::ensure!(
                    response.status().is_success(),
                    "signing up a passenger was answered {} (at this rate the server needs \
                     HAIL_SIGNUP_LIMIT_PER_MIN lifted, as the README's benchmarks do)",
                    response.status()
                );
                Ok(response.json::<Credentials>().await?.token)
            });
        }
        let mut tokens = Vec::with_capacity(count);
        while let Some(token) = signups.join_next().await {
            tokens.push(token??);
        }
        Ok(tokens)
    }

    /// Sends one request per passenger, `rate` a second evenly spaced, pickups spread
    /// over the drivers' part of Seoul; returns when the last one is due plus one gap.
    pub async fn request_all(self: &Arc<Self>, passengers: Vec<String>, rate: f64, seed: u64) {
        let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(7_919));
        let gap = Duration::from_secs_f64(1.0 / rate);
        let start = Instant::now();
        let mut due = start;
        for token in passengers {
            tokio::time::sleep_until(due).await;
            let pickup = random_point_in_seoul(&mut rng);
            let dropoff = pickup.destination(
                rng.random_range(0.0..360.0),
                rng.random_range(1_000.0..6_000.0),
            );
            let trips = self.clone();
            self.posting.fetch_add(1, Ordering::Relaxed);
            self.spawn(async move {
                trips.request(&token, pickup, dropoff, due).await;
                trips.posting.fetch_sub(1, Ordering::Relaxed);
            });
            due += gap;
        }
        tokio::time::sleep_until(due).await;
    }

    async fn request(&self, token: &str, pickup: LatLng, dropoff: LatLng, due: Instant) {
        let Ok(_permit) = self.in_flight.acquire().await else {
            return;
        };
        let sent = Instant::now();
        add(&self.sent, 1);
        if sent.saturating_duration_since(due) > LATE {
            add(&self.late, 1);
        }
        let body = TripRequest { pickup, dropoff };
        let Some(answer) = self.post("POST /v1/trips", "/v1/trips", token, &body).await else {
            return;
        };
        match serde_json::from_slice::<Trip>(&answer) {
            Ok(trip) => {
                add(&self.requested, 1);
                self.timing.lock().unwrap().entry(trip.id).or_default().0 = Some(sent);
            }
            Err(_) => self.errors.note("POST /v1/trips: unreadable answer"),
        }
    }

    /// Notes each offer's arrival and sets its driver on the ride, until the fleet stops.
    pub async fn answer_offers(self: Arc<Self>, mut offers: mpsc::Receiver<OfferFrame>) {
        while let Some(frame) = offers.recv().await {
            let Ok(ServerMessage::Offer(offer)) = serde_json::from_slice(&frame.json) else {
                self.errors.note("driver socket: unreadable offer");
                continue;
            };
            {
                let mut timing = self.timing.lock().unwrap();
                let entry = timing.entry(offer.trip_id.clone()).or_default();
                entry.1.get_or_insert(frame.at);
            }
            let trips = self.clone();
            self.spawn(async move {
                trips
                    .ride(frame.driver, &offer.offer_id, &offer.trip_id)
                    .await;
            });
        }
    }

    /// Accept after the think time, then arrive, start and complete a step apart.
    async fn ride(&self, driver: usize, offer_id: &str, trip_id: &str) {
        let token = &self.driver_tokens[driver];
        if !self.wait_unless_stopped(self.steps.think).await {
            return;
        }
        let accept = format!("/v1/offers/{offer_id}/accept");
        if self
            .post_permitted("POST /v1/offers/{id}/accept", &accept, token)
            .await
            .is_none()
        {
            return;
        }
        add(&self.accepted, 1);
        for step in ["arrive", "start", "complete"] {
            if !self.wait_unless_stopped(self.steps.ride_step).await {
                return;
            }
            let what = format!("POST /v1/trips/{{id}}/{step}");
            let path = format!("/v1/trips/{trip_id}/{step}");
            if self.post_permitted(&what, &path, token).await.is_none() {
                return;
            }
        }
        add(&self.completed, 1);
    }

    /// Waits `delay`, or less if the run ends meanwhile; false once it has ended.
    async fn wait_unless_stopped(&self, delay: Duration) -> bool {
        let mut stop = self.stop.subscribe();
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = stop.wait_for(|stopped| *stopped) => {}
        }
        !*self.stop.borrow()
    }

    /// A ride's request, unless the run ended while it waited for its turn (then `None`,
    /// and nothing is counted).
    async fn post_permitted(&self, what: &str, path: &str, token: &str) -> Option<Vec<u8>> {
        let _permit = self.in_flight.acquire().await.ok()?;
        if *self.stop.borrow() {
            return None;
        }
        self.post(what, path, token, &serde_json::json!({})).await
    }

    /// The answer's body if it was a success; otherwise the failure is counted.
    async fn post(
        &self,
        what: &str,
        path: &str,
        token: &str,
        body: &impl Serialize,
    ) -> Option<Vec<u8>> {
        let answer = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(token)
            .json(body)
            .send()
            .await;
        let response = match answer {
            Ok(response) => response,
            Err(error) => {
                let kind = if error.is_timeout() {
                    "timed out"
                } else if error.is_connect() {
                    "connect failed"
                } else {
                    "transport error"
                };
                self.errors.note(format!("{what}: {kind}"));
                return None;
            }
        };
        let status = response.status();
        let Ok(bytes) = response.bytes().await else {
            self.errors.note(format!("{what}: answer cut off"));
            return None;
        };
        if status.is_success() {
            return Some(bytes.to_vec());
        }
        let code = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|body| body["error"]["code"].as_str().map(str::to_string))
            .unwrap_or_default();
        self.errors
            .note(format!("{what}: {} {code}", status.as_u16()).trim_end());
        None
    }

    /// Waits until every request is answered and every requested trip has its offer, or
    /// `deadline`.
    /// Runs a request or a ride; the finished ones are let go first, so a long run does
    /// not keep one entry per trip.
    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let mut tasks = self.tasks.lock().unwrap();
        while tasks.try_join_next().is_some() {}
        tasks.spawn(task);
    }

    /// Trip requests still waiting for the server's answer (or for a connection).
    pub fn unanswered(&self) -> u64 {
        self.posting.load(Ordering::Relaxed)
    }

    pub async fn wait_for_offers(&self, deadline: Instant) {
        while Instant::now() < deadline {
            let waiting = self.posting.load(Ordering::Relaxed) > 0
                || self
                    .timing
                    .lock()
                    .unwrap()
                    .values()
                    .any(|(sent, offered)| sent.is_some() && offered.is_none());
            if !waiting {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Ends the rides still under way: each stops before its next step, a request already
    /// sent is answered and counted first (for up to [`STOP_PATIENCE`], then cut off).
    pub async fn stop_rides(&self) {
        self.stop.send_replace(true);
        let mut tasks = std::mem::take(&mut *self.tasks.lock().unwrap());
        let _ = tokio::time::timeout(STOP_PATIENCE, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        tasks.shutdown().await;
    }

    pub fn outcome(&self) -> Outcome {
        let timing = self.timing.lock().unwrap();
        let mut latencies_ms: Vec<f64> = timing
            .values()
            .filter_map(|(sent, offered)| {
                Some(offered.as_ref()?.saturating_duration_since(*sent.as_ref()?))
            })
            .map(|latency| latency.as_secs_f64() * 1_000.0)
            .collect();
        latencies_ms.sort_by(f64::total_cmp);
        let unoffered = timing
            .values()
            .filter(|(sent, offered)| sent.is_some() && offered.is_none())
            .count() as u64;
        Outcome {
            sent: get(&self.sent),
            requested: get(&self.requested),
            unoffered,
            accepted: get(&self.accepted),
            completed: get(&self.completed),
            late: get(&self.late),
            latencies_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::{Router, extract::State, routing::post};
    use tokio::sync::Notify;

    use super::*;

    /// A server whose `complete` is answered only when the test says so.
    #[derive(Default)]
    struct Gate {
        received: Notify,
        release: Notify,
    }

    /// Such a server on a free port, and rides against it (no think time, no steps apart)
    /// with one of them under way; returns once its `complete` has reached the server.
    async fn a_ride_at_the_gate() -> (Arc<Trips>, Arc<Gate>, Arc<Errors>) {
        let gate = Arc::new(Gate::default());
        let app = Router::new()
            .route("/v1/offers/{id}/accept", post(|| async {}))
            .route("/v1/trips/{id}/arrive", post(|| async {}))
            .route("/v1/trips/{id}/start", post(|| async {}))
            .route(
                "/v1/trips/{id}/complete",
                post(|State(gate): State<Arc<Gate>>| async move {
                    gate.received.notify_one();
                    gate.release.notified().await;
                }),
            )
            .with_state(gate.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });

        let steps = Steps {
            think: Duration::ZERO,
            ride_step: Duration::ZERO,
        };
        let errors = Arc::new(Errors::default());
        let trips = Arc::new(Trips::new(
            reqwest::Client::new(),
            base,
            vec!["driver-token".into()],
            steps,
            errors.clone(),
        ));
        let riding = trips.clone();
        trips.spawn(async move { riding.ride(0, "offer-1", "trip-1").await });
        gate.received.notified().await;
        (trips, gate, errors)
    }

    #[tokio::test]
    async fn a_ride_stopped_with_a_request_under_way_counts_the_answer() {
        let (trips, gate, errors) = a_ride_at_the_gate().await;

        // The run ends while `complete` is under way; the server answers it after that.
        let mut stopped = trips.stop.subscribe();
        let release = async {
            stopped.wait_for(|stopped| *stopped).await.unwrap();
            gate.release.notify_one();
        };
        tokio::join!(trips.stop_rides(), release);

        let outcome = trips.outcome();
        assert_eq!(outcome.accepted, 1);
        assert_eq!(outcome.completed, 1, "the server completed the ride");
        assert!(errors.take().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_never_answered_does_not_hold_the_end_of_the_run() {
        let (trips, _gate, errors) = a_ride_at_the_gate().await;

        // The server never answers `complete`: the run ends after its patience anyway.
        tokio::time::timeout(STOP_PATIENCE * 2, trips.stop_rides())
            .await
            .expect("the rides stopped within the patience");

        let outcome = trips.outcome();
        assert_eq!(outcome.accepted, 1);
        assert_eq!(outcome.completed, 0, "no answer, so not counted");
        assert!(errors.take().is_empty());
    }
}
