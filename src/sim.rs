//! `hail sim`: a living city of drivers and passengers that are real clients of the public
//! contract (DESIGN §3) over HTTP and WebSocket, so it drives any hail server, local or
//! remote. It is the demo's city and the load generator behind every end-to-end figure.
//!
//! Drivers cruise at city speeds, head to the pickup when they win an offer, drive to the
//! drop-off, and ping on the configured interval; they accept offers with a configurable
//! probability after a think time, decline some and let others lapse, so every dispatch
//! path runs. Passengers appear around demand hotspots and some cancel while waiting.
//! Everything random is drawn from generators seeded by `--seed`.

use std::{
    collections::HashMap,
    io::{IsTerminal, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
use clap::Args;
use futures_util::{SinkExt, StreamExt};
use rand::{RngExt, SeedableRng, rngs::StdRng};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::{
    net::TcpSocket,
    sync::{Semaphore, watch},
    task::JoinSet,
    time::Instant,
};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{Message, protocol::WebSocketConfig},
};

use crate::{geometry::LatLng, ops::percentile};

/// Demand hotspots of Seoul, by name.
const HOTSPOTS: &[(&str, f64, f64)] = &[
    ("gangnam", 37.4979, 127.0276),
    ("hongdae", 37.5563, 126.9236),
    ("jongno", 37.5704, 126.9920),
    ("yeouido", 37.5219, 126.9245),
    ("jamsil", 37.5133, 127.1001),
    ("seoul_station", 37.5547, 126.9707),
    ("itaewon", 37.5345, 126.9946),
];
/// Seoul City Hall: the middle of the simulated city.
const CITY_CENTRE: (f64, f64) = (37.5663, 126.9779);
/// Drivers who cruise further than this from the centre turn back.
const CITY_RADIUS_M: f64 = 12_000.0;
const CRUISE_SPEED_MPS: f64 = 8.0;
const DRIVE_SPEED_MPS: f64 = 11.0;
/// How long a driver waits at the pickup before starting the ride, at time scale 1.
const BOARDING: Duration = Duration::from_secs(20);
/// The longest the simulator waits for its fleet to come online before requests start.
const RAMP_UP_LIMIT: Duration = Duration::from_secs(300);
/// One source address serves at most this many driver sockets (ephemeral ports).
const SOCKETS_PER_SOURCE_ADDRESS: u32 = 20_000;
/// Small client buffers: tungstenite's defaults would cost 128 KiB+ per driver.
const CLIENT_BUFFER_BYTES: usize = 4 * 1024;

fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(text.len()),
    );
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 90s, 5m or 1h"))?;
    let seconds = match unit {
        "" | "s" => value,
        "ms" => value / 1_000.0,
        "m" => value * 60.0,
        "h" => value * 3_600.0,
        _ => {
            return Err(format!(
                "unknown unit {unit:?} in {text:?}: use ms, s, m or h"
            ));
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|error| error.to_string())
}

fn parse_probability(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(p) if (0.0..=1.0).contains(&p) => Ok(p),
        _ => Err(format!("{text:?} is not a probability between 0 and 1")),
    }
}

/// `hail sim`.
#[derive(Debug, Clone, Args)]
pub struct SimConfig {
    /// The hail server to drive.
    #[arg(long, env = "HAIL_SIM_SERVER", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// Operator token of that server (drivers are onboarded through the operator API).
    #[arg(long, env = "HAIL_OPERATOR_TOKEN", hide_env_values = true)]
    pub operator_token: String,
    /// Simulated drivers, each with its own WebSocket.
    #[arg(long, default_value_t = 200)]
    pub drivers: u32,
    /// How often each driver sends its position.
    #[arg(long, default_value_t = 4_000, value_parser = clap::value_parser!(u64).range(50..))]
    pub ping_interval_ms: u64,
    /// New ride requests per minute, city-wide (Poisson arrivals).
    #[arg(long, default_value_t = 30.0)]
    pub requests_per_min: f64,
    /// How long new requests keep coming (e.g. 90s, 5m).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub duration: Duration,
    /// After that, how long open rides may still finish before the run ends.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub drain: Duration,
    /// Seed of every random choice, so a run can be repeated.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Demand mix: `name=weight,…` from gangnam, hongdae, jongno, yeouido, jamsil,
    /// seoul_station, itaewon.
    #[arg(
        long,
        default_value = "gangnam=3,hongdae=2,jongno=2,yeouido=1,jamsil=2"
    )]
    pub hotspots: String,
    /// Probability that a driver accepts an offer (after the think time).
    #[arg(long, default_value_t = 0.8, value_parser = parse_probability)]
    pub accept_probability: f64,
    /// Probability that a driver declines; the rest let the offer lapse.
    #[arg(long, default_value_t = 0.1, value_parser = parse_probability)]
    pub decline_probability: f64,
    /// How long a driver looks at an offer before answering (uniform up to this).
    #[arg(long, default_value_t = 2_000)]
    pub think_time_ms: u64,
    /// Probability that a passenger cancels while waiting.
    #[arg(long, default_value_t = 0.1, value_parser = parse_probability)]
    pub cancel_probability: f64,
    /// Speeds up the city's clock: driving and boarding go this many times faster.
    #[arg(long, default_value_t = 1.0)]
    pub time_scale: f64,
    /// Spread driver sockets over this many 127.0.0.x source addresses (0: one per
    /// 20,000 drivers). Only for a server on a loopback address.
    #[arg(long, default_value_t = 0)]
    pub source_addresses: u32,
    /// Print one final JSON line with the summary.
    #[arg(long)]
    pub json: bool,
    /// No live progress (for embedding, e.g. tests).
    #[arg(skip)]
    pub quiet: bool,
    /// Where to note every acknowledged change and every streamed event (chaos harness).
    #[arg(skip)]
    pub journal: Option<Arc<Journal>>,
}

/// A change the server acknowledged to a simulated client: `event` at `seq` of `trip_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acknowledged {
    pub trip_id: String,
    pub seq: i64,
    pub event: &'static str,
}

/// What the simulated clients were told, for checking against the store afterwards.
#[derive(Debug, Default)]
pub struct Journal {
    pub acknowledged: Mutex<Vec<Acknowledged>>,
    /// Trip-stream events received, and those out of order: a seq past the next one (a
    /// gap) or at or before the last one (a repeat). Both must stay zero.
    pub events_streamed: AtomicU64,
    pub stream_gaps: AtomicU64,
    pub stream_repeats: AtomicU64,
}

impl Journal {
    fn streamed(&self, seq: i64, last_seq: i64) {
        self.events_streamed.fetch_add(1, Ordering::Relaxed);
        if seq > last_seq + 1 {
            self.stream_gaps.fetch_add(1, Ordering::Relaxed);
        } else if seq <= last_seq {
            self.stream_repeats.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl SimConfig {
    /// A config with the documented defaults for `server`.
    pub fn new(server: impl Into<String>, operator_token: impl Into<String>) -> SimConfig {
        #[derive(clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            config: SimConfig,
        }
        let command =
            <Wrapper as clap::CommandFactory>::command().mut_args(|arg| arg.env(None::<&str>));
        let matches = command.get_matches_from(["sim", "--operator-token", "placeholder"]);
        let mut config = <Wrapper as clap::FromArgMatches>::from_arg_matches(&matches)
            .expect("the defaults parse")
            .config;
        config.server = server.into();
        config.operator_token = operator_token.into();
        config
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    pub samples: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Mean {
    pub mean: Option<f64>,
    pub samples: u64,
}

/// What a run did, as its clients saw it.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub drivers: u32,
    /// Most driver sockets open at once.
    pub drivers_connected: u64,
    pub pings_sent: u64,
    /// Over the measured window: from the fleet being online to the end.
    pub pings_per_s: f64,
    /// Requests the server acknowledged (201).
    pub trips_requested: u64,
    pub trips_completed: u64,
    pub trips_expired: u64,
    pub trips_cancelled: u64,
    /// Acknowledged trips not yet finished when the run ended.
    pub trips_unfinished: u64,
    pub offers_received: u64,
    pub offers_accepted: u64,
    pub offers_declined: u64,
    pub offers_ignored: u64,
    /// From sending a request to its first offer arriving on a driver's socket.
    pub offer_latency_ms: Percentiles,
    pub pickup_distance_m: Mean,
    pub connect_errors: u64,
    /// Drivers the server would not onboard.
    pub onboarding_failures: u64,
    pub http_errors: u64,
    pub socket_drops: u64,
    pub elapsed_s: f64,
}

/// When a trip's request was sent, and when its first offer arrived.
type RequestTiming = (Option<Instant>, Option<Instant>);

#[derive(Default)]
struct Counters {
    connected: AtomicU64,
    connected_max: AtomicU64,
    pings: AtomicU64,
    requested: AtomicU64,
    completed: AtomicU64,
    expired: AtomicU64,
    cancelled: AtomicU64,
    matched: AtomicU64,
    offers: AtomicU64,
    accepted: AtomicU64,
    declined: AtomicU64,
    ignored: AtomicU64,
    connect_errors: AtomicU64,
    onboarding_failures: AtomicU64,
    http_errors: AtomicU64,
    socket_drops: AtomicU64,
    pickup_m_sum: Mutex<(f64, u64)>,
    latencies_ms: Mutex<Vec<f64>>,
    /// Per trip: when its request was sent and when its first offer arrived; whichever
    /// is learnt second completes a latency sample.
    timing: Mutex<HashMap<String, RequestTiming>>,
}

impl Counters {
    fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    fn timing(&self, trip_id: &str, sent: Option<Instant>, offered: Option<Instant>) {
        let mut timing = self.timing.lock().unwrap();
        let entry = timing.entry(trip_id.to_string()).or_default();
        if entry.0.is_none() {
            entry.0 = sent;
        }
        let first_offer = entry.1.is_none() && offered.is_some();
        if first_offer {
            entry.1 = offered;
        }
        if let (Some(sent_at), Some(offered_at)) = *entry
            && (first_offer || sent.is_some())
        {
            let latency = offered_at.saturating_duration_since(sent_at);
            self.latencies_ms
                .lock()
                .unwrap()
                .push(latency.as_secs_f64() * 1_000.0);
        }
    }

    fn latencies(&self) -> Vec<f64> {
        let mut values = self.latencies_ms.lock().unwrap().clone();
        values.sort_by(f64::total_cmp);
        values
    }
}

/// What every simulated client shares.
struct City {
    config: SimConfig,
    http: reqwest::Client,
    base: String,
    ws_base: String,
    server_address: SocketAddr,
    source_addresses: Vec<IpAddr>,
    hotspots: Vec<(LatLng, f64)>,
    counters: Counters,
}

impl City {
    fn scale(&self, duration: Duration) -> Duration {
        duration.div_f64(self.config.time_scale.max(0.01))
    }

    /// A point around a hotspot, drawn by the demand mix.
    fn demand_point(&self, rng: &mut StdRng) -> LatLng {
        let total: f64 = self.hotspots.iter().map(|(_, w)| w).sum();
        let mut pick = rng.random_range(0.0..total.max(f64::MIN_POSITIVE));
        let mut centre = self.hotspots[0].0;
        for (point, weight) in &self.hotspots {
            if pick < *weight {
                centre = *point;
                break;
            }
            pick -= weight;
        }
        // Most requests within about a kilometre of the hotspot.
        let distance = rng.random_range(0.0f64..1.0).sqrt() * 1_200.0;
        centre.destination(rng.random_range(0.0..360.0), distance)
    }

    async fn post(&self, path: &str, token: &str, body: Value) -> Result<(u16, Value), ()> {
        self.send(
            self.http
                .post(format!("{}{path}", self.base))
                .bearer_auth(token)
                .json(&body),
        )
        .await
    }

    /// Sends a request; server errors and lost answers count as HTTP errors.
    async fn send(&self, request: reqwest::RequestBuilder) -> Result<(u16, Value), ()> {
        match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                let body = response.json::<Value>().await.unwrap_or(Value::Null);
                if status >= 500 {
                    Counters::add(&self.counters.http_errors);
                }
                Ok((status, body))
            }
            Err(_) => {
                Counters::add(&self.counters.http_errors);
                Err(())
            }
        }
    }

    async fn connect(
        &self,
        path: &str,
        index: usize,
    ) -> anyhow::Result<WebSocketStream<tokio::net::TcpStream>> {
        let socket = TcpSocket::new_v4()?;
        if let Some(source) = self
            .source_addresses
            .get(index % self.source_addresses.len().max(1))
        {
            socket.bind(SocketAddr::new(*source, 0))?;
        }
        let stream = socket.connect(self.server_address).await?;
        stream.set_nodelay(true)?;
        let config = WebSocketConfig::default()
            .read_buffer_size(CLIENT_BUFFER_BYTES)
            .write_buffer_size(0)
            .max_message_size(Some(1 << 20));
        let url = format!("{}{path}", self.ws_base);
        let (ws, _) =
            tokio_tungstenite::client_async_with_config(url, stream, Some(config)).await?;
        Ok(ws)
    }
}

/// Runs the city until `--duration` plus the drain, or until `stop` turns true.
pub async fn run(config: SimConfig, stop: watch::Receiver<bool>) -> anyhow::Result<Summary> {
    let base = config.server.trim_end_matches('/').to_string();
    let (scheme, rest) = base
        .split_once("://")
        .context("--server must look like http://host:port")?;
    anyhow::ensure!(
        scheme == "http",
        "--server must be an http:// URL (TLS is not supported by the simulator)"
    );
    let host_port = rest.split('/').next().unwrap_or(rest);
    let server_address = tokio::net::lookup_host(host_port)
        .await
        .with_context(|| format!("resolving {host_port}"))?
        .find(SocketAddr::is_ipv4)
        .context("the server needs an IPv4 address")?;
    let hotspots = parse_hotspots(&config.hotspots)?;
    anyhow::ensure!(
        config.time_scale > 0.0 && config.time_scale.is_finite(),
        "--time-scale must be positive"
    );
    anyhow::ensure!(
        config.requests_per_min >= 0.0,
        "--requests-per-min must not be negative"
    );
    anyhow::ensure!(
        config.accept_probability + config.decline_probability <= 1.0,
        "--accept-probability plus --decline-probability must not exceed 1"
    );

    // Each driver is a socket, each waiting passenger another: ask for the descriptors.
    let wanted = u64::from(config.drivers) * 2 + 1_024;
    let limit = rlimit::increase_nofile_limit(wanted).unwrap_or(0);
    if limit < wanted && !config.quiet {
        eprintln!("warning: open-file limit is {limit}, below the {wanted} this run may need");
    }
    let sources = match (server_address.ip(), config.source_addresses) {
        (IpAddr::V4(ip), _) if !ip.is_loopback() => Vec::new(),
        (_, 0) => source_addresses(config.drivers.div_ceil(SOCKETS_PER_SOURCE_ADDRESS).max(1)),
        (_, n) => source_addresses(n),
    };
    let city = Arc::new(City {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .build()?,
        ws_base: base.replacen("http://", "ws://", 1),
        base,
        server_address,
        source_addresses: sources,
        hotspots,
        counters: Counters::default(),
        config,
    });
    let (stop_clients, clients_stop) = watch::channel(false);

    // Drivers: onboarded through the operator API, a bounded number at a time.
    let mut drivers = JoinSet::new();
    let onboarding = Arc::new(Semaphore::new(64));
    for index in 0..city.config.drivers as usize {
        let (city, onboarding, stop) = (city.clone(), onboarding.clone(), clients_stop.clone());
        drivers.spawn(async move {
            let account = {
                let _permit = onboarding.acquire().await;
                let body =
                    json!({"name": format!("Driver {index}"), "vehicle": {"plate": plate(index)}});
                match city
                    .post("/v1/drivers", &city.config.operator_token, body)
                    .await
                {
                    Ok((201, body)) => body["token"].as_str().unwrap_or_default().to_string(),
                    Ok((status, body)) => {
                        if index == 0 {
                            eprintln!("error: onboarding a driver answered {status}: {body}");
                        }
                        Counters::add(&city.counters.onboarding_failures);
                        return;
                    }
                    Err(()) => {
                        Counters::add(&city.counters.onboarding_failures);
                        return;
                    }
                }
            };
            let rng = StdRng::seed_from_u64(
                city.config
                    .seed
                    .wrapping_mul(1_000_003)
                    .wrapping_add(index as u64),
            );
            drive(city, account, index, rng, stop).await;
        });
    }

    let progress = (!city.config.quiet)
        .then(|| tokio::spawn(report_progress(city.clone(), clients_stop.clone())));

    // The fleet comes online first, so the figures describe a running city rather than
    // a ramp-up (bounded: a fleet that cannot all connect is reported, not waited for).
    let ramp_end = Instant::now() + RAMP_UP_LIMIT;
    let mut stop_watch = stop.clone();
    loop {
        let c = &city.counters;
        let settled = Counters::get(&c.connected) + Counters::get(&c.onboarding_failures);
        if settled >= u64::from(city.config.drivers) || Instant::now() >= ramp_end || *stop.borrow()
        {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            _ = crate::server::stopping(&mut stop_watch) => {}
        }
    }
    let started = Instant::now();
    let pings_before = Counters::get(&city.counters.pings);

    // Passengers: Poisson arrivals until the duration is over (or we are stopped).
    let mut passengers = JoinSet::new();
    let mut rng = StdRng::seed_from_u64(city.config.seed);
    let rate_per_s = city.config.requests_per_min / 60.0;
    let requests_end = started + city.config.duration;
    let mut next_arrival = started;
    let mut passenger_index = 0u64;
    loop {
        if rate_per_s > 0.0 {
            let gap_s = -rng.random_range(f64::EPSILON..1.0f64).ln() / rate_per_s;
            next_arrival += Duration::from_secs_f64(gap_s.min(3_600.0));
        } else {
            next_arrival = requests_end;
        }
        if next_arrival >= requests_end {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(next_arrival) => {}
            _ = crate::server::stopping(&mut stop_watch) => break,
        }
        let (city, stop) = (city.clone(), clients_stop.clone());
        let seed = city
            .config
            .seed
            .wrapping_mul(7_919)
            .wrapping_add(passenger_index);
        passenger_index += 1;
        passengers.spawn(async move { ride(city, StdRng::seed_from_u64(seed), stop).await });
    }
    if !*stop.borrow() {
        tokio::select! {
            _ = tokio::time::sleep_until(requests_end) => {}
            _ = crate::server::stopping(&mut stop_watch) => {}
        }
    }
    // Drain: rides under way may finish.
    let drain_end = Instant::now() + city.config.drain;
    tokio::select! {
        _ = async { while passengers.join_next().await.is_some() {} } => {}
        _ = tokio::time::sleep_until(drain_end) => {}
        _ = crate::server::stopping(&mut stop_watch) => {}
    }
    let _ = stop_clients.send(true);
    while passengers.join_next().await.is_some() {}
    while drivers.join_next().await.is_some() {}
    if let Some(progress) = progress {
        let _ = progress.await;
    }
    Ok(summarize(&city, started.elapsed(), pings_before))
}

fn source_addresses(count: u32) -> Vec<IpAddr> {
    (0..count.clamp(1, 250))
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + i as u8)))
        .collect()
}

fn parse_hotspots(text: &str) -> anyhow::Result<Vec<(LatLng, f64)>> {
    let mut found = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, weight) = part.split_once('=').unwrap_or((part, "1"));
        let weight: f64 = weight
            .parse()
            .ok()
            .filter(|w: &f64| w.is_finite() && *w >= 0.0)
            .with_context(|| format!("bad weight in {part:?}"))?;
        let &(_, lat, lng) = HOTSPOTS
            .iter()
            .find(|(known, _, _)| *known == name)
            .with_context(|| {
                format!(
                    "unknown hotspot {name:?}; known: {}",
                    HOTSPOTS.iter().map(|h| h.0).collect::<Vec<_>>().join(", ")
                )
            })?;
        found.push((LatLng::new(lat, lng)?, weight));
    }
    anyhow::ensure!(
        found.iter().any(|(_, w)| *w > 0.0),
        "--hotspots needs at least one positive weight"
    );
    Ok(found)
}

fn plate(index: usize) -> String {
    const SYLLABLES: [&str; 8] = ["가", "나", "다", "라", "마", "바", "사", "아"];
    format!(
        "{:02}{}{:04}",
        10 + index % 90,
        SYLLABLES[index % 8],
        index % 10_000
    )
}

#[derive(Debug, Clone)]
enum Phase {
    Cruising,
    ToPickup {
        trip_id: String,
        pickup: LatLng,
        dropoff: LatLng,
    },
    Boarding {
        trip_id: String,
        dropoff: LatLng,
        until: Instant,
    },
    ToDropoff {
        trip_id: String,
        dropoff: LatLng,
    },
}

impl Phase {
    fn trip_id(&self) -> Option<&str> {
        match self {
            Phase::Cruising => None,
            Phase::ToPickup { trip_id, .. }
            | Phase::Boarding { trip_id, .. }
            | Phase::ToDropoff { trip_id, .. } => Some(trip_id),
        }
    }
}

enum Answer {
    Accept,
    Decline,
}

/// One driver: keeps a socket open (reconnecting with backoff and jitter), moves, pings,
/// answers offers and drives its rides.
async fn drive(
    city: Arc<City>,
    token: String,
    index: usize,
    mut rng: StdRng,
    mut stop: watch::Receiver<bool>,
) {
    let counters = &city.counters;
    let centre = LatLng::new(CITY_CENTRE.0, CITY_CENTRE.1).expect("valid");
    let mut position = city
        .demand_point(&mut rng)
        .destination(rng.random_range(0.0..360.0), rng.random_range(0.0..3_000.0));
    let mut heading = rng.random_range(0.0..360.0);
    let mut phase = Phase::Cruising;
    let mut backoff = Duration::from_millis(100);
    let ping_every = Duration::from_millis(city.config.ping_interval_ms);
    'connection: loop {
        if *stop.borrow() {
            return;
        }
        let mut ws = match city
            .connect(&format!("/v1/driver/ws?token={token}"), index)
            .await
        {
            Ok(ws) => ws,
            Err(error) => {
                if Counters::get(&counters.connect_errors) == 0 && !city.config.quiet {
                    eprintln!("driver socket failed to connect (retrying with backoff): {error}");
                }
                Counters::add(&counters.connect_errors);
                let wait = backoff.mul_f64(rng.random_range(0.5..1.5));
                backoff = (backoff * 2).min(Duration::from_secs(5));
                tokio::select! {
                    _ = tokio::time::sleep(wait) => continue 'connection,
                    _ = crate::server::stopping(&mut stop) => return,
                }
            }
        };
        backoff = Duration::from_millis(100);
        let open = counters.connected.fetch_add(1, Ordering::Relaxed) + 1;
        counters.connected_max.fetch_max(open, Ordering::Relaxed);
        let hello = [
            json!({"type": "status", "status": "available"}),
            json!({"type": "location", "lat": position.lat(), "lng": position.lng()}),
        ];
        let mut alive = true;
        for message in hello {
            alive &= ws.send(Message::text(message.to_string())).await.is_ok();
        }
        // Spread the first pings over one interval so drivers do not ping in lockstep.
        let first = Instant::now() + ping_every.mul_f64(rng.random_range(0.0..1.0));
        let mut ping = tokio::time::interval_at(first, ping_every);
        let mut last_move = Instant::now();
        let mut pending_answer: Option<(Instant, String, Answer)> = None;
        while alive {
            let answer_due = pending_answer.as_ref().map(|(at, _, _)| *at);
            tokio::select! {
                _ = crate::server::stopping(&mut stop) => {
                    let _ = ws.close(None).await;
                    counters.connected.fetch_sub(1, Ordering::Relaxed);
                    return;
                }
                _ = ping.tick() => {
                    let now = Instant::now();
                    let elapsed = now.duration_since(last_move).as_secs_f64() * city.config.time_scale;
                    last_move = now;
                    let arrived = advance(&mut position, &mut heading, &phase, elapsed, &centre, &mut rng);
                    phase = next_phase(&city, &token, phase, arrived, now).await;
                    let ping = json!({"type": "location", "lat": position.lat(), "lng": position.lng(), "heading_deg": heading.round()});
                    alive = ws.send(Message::text(ping.to_string())).await.is_ok();
                    Counters::add(&counters.pings);
                }
                _ = sleep_until_some(answer_due) => {
                    if let Some((_, offer_id, answer)) = pending_answer.take() {
                        match answer {
                            Answer::Accept => {
                                if let Ok((200, trip)) = city.post(&format!("/v1/offers/{offer_id}/accept"), &token, json!({})).await
                                    && let (Some(trip_id), Ok(pickup), Ok(dropoff)) = (trip["id"].as_str(), point(&trip["pickup"]), point(&trip["dropoff"]))
                                {
                                    Counters::add(&counters.accepted);
                                    city.acknowledged(trip_id, trip["seq"].as_i64().unwrap_or(0), "accepted");
                                    phase = Phase::ToPickup { trip_id: trip_id.to_string(), pickup, dropoff };
                                }
                            }
                            Answer::Decline => {
                                if let Ok((204, _)) = city.post(&format!("/v1/offers/{offer_id}/decline"), &token, json!({})).await {
                                    Counters::add(&counters.declined);
                                }
                            }
                        }
                    }
                }
                frame = ws.next() => {
                    let Some(Ok(frame)) = frame else { alive = false; continue };
                    let Message::Text(text) = frame else { continue };
                    let Ok(message) = serde_json::from_str::<Value>(&text) else { continue };
                    match message["type"].as_str() {
                        Some("offer") => {
                            Counters::add(&counters.offers);
                            if let Some(trip_id) = message["trip_id"].as_str() {
                                counters.timing(trip_id, None, Some(Instant::now()));
                            }
                            if let Some(distance) = message["pickup_distance_m"].as_f64() {
                                let mut sum = counters.pickup_m_sum.lock().unwrap();
                                sum.0 += distance;
                                sum.1 += 1;
                            }
                            let offer_id = message["offer_id"].as_str().unwrap_or_default().to_string();
                            let think = Duration::from_millis(rng.random_range(0..=city.config.think_time_ms));
                            let roll: f64 = rng.random_range(0.0..1.0);
                            if roll < city.config.accept_probability {
                                pending_answer = Some((Instant::now() + think, offer_id, Answer::Accept));
                            } else if roll < city.config.accept_probability + city.config.decline_probability {
                                pending_answer = Some((Instant::now() + think, offer_id, Answer::Decline));
                            } else {
                                Counters::add(&counters.ignored);
                            }
                        }
                        Some("offer_withdrawn")
                            if pending_answer.as_ref().is_some_and(|(_, id, _)| message["offer_id"] == id.as_str()) =>
                        {
                            pending_answer = None;
                        }
                        Some("trip_event") => {
                            let ours = phase.trip_id().is_some_and(|id| message["trip_id"] == id);
                            let state = message["trip"]["state"].as_str();
                            if ours && matches!(state, Some("cancelled" | "requested" | "completed" | "expired")) {
                                phase = Phase::Cruising;
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
        counters.connected.fetch_sub(1, Ordering::Relaxed);
        Counters::add(&counters.socket_drops);
        let wait = backoff.mul_f64(rng.random_range(0.5..1.5));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = crate::server::stopping(&mut stop) => return,
        }
    }
}

async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn point(value: &Value) -> Result<LatLng, ()> {
    LatLng::new(
        value["lat"].as_f64().ok_or(())?,
        value["lng"].as_f64().ok_or(())?,
    )
    .map_err(|_| ())
}

/// Moves a driver by `seconds` of (scaled) driving. Returns whether it reached the
/// target of its phase.
fn advance(
    position: &mut LatLng,
    heading: &mut f64,
    phase: &Phase,
    seconds: f64,
    centre: &LatLng,
    rng: &mut StdRng,
) -> bool {
    let target = match phase {
        Phase::Cruising => None,
        Phase::ToPickup { pickup, .. } => Some(*pickup),
        Phase::ToDropoff { dropoff, .. } => Some(*dropoff),
        Phase::Boarding { .. } => return false,
    };
    match target {
        Some(target) => {
            let step = DRIVE_SPEED_MPS * seconds;
            let left = position.distance_m(&target);
            if left <= step.max(15.0) {
                *position = target;
                return true;
            }
            *heading = position.bearing_to(&target);
            *position = position.destination(*heading, step);
            false
        }
        None => {
            *heading = if position.distance_m(centre) > CITY_RADIUS_M {
                position.bearing_to(centre)
            } else {
                (*heading + rng.random_range(-35.0..35.0)).rem_euclid(360.0)
            };
            *position = position.destination(*heading, CRUISE_SPEED_MPS * seconds);
            false
        }
    }
}

/// The driver's side of a ride: arrive, board, start, drive, complete. A step the server
/// did not answer (restarting, unreachable) is tried again on the next ping; one it
/// refused ends the ride (it was cancelled meanwhile).
async fn next_phase(city: &City, token: &str, phase: Phase, arrived: bool, now: Instant) -> Phase {
    match phase {
        Phase::ToPickup {
            ref trip_id,
            dropoff,
            ..
        } if arrived => match city.ride_step(token, trip_id, "arrive").await {
            Some(true) => Phase::Boarding {
                trip_id: trip_id.clone(),
                dropoff,
                until: now + city.scale(BOARDING),
            },
            Some(false) => Phase::Cruising,
            None => phase,
        },
        Phase::Boarding {
            ref trip_id,
            dropoff,
            until,
        } if now >= until => match city.ride_step(token, trip_id, "start").await {
            Some(true) => Phase::ToDropoff {
                trip_id: trip_id.clone(),
                dropoff,
            },
            Some(false) => Phase::Cruising,
            None => phase,
        },
        Phase::ToDropoff { ref trip_id, .. } if arrived => {
            match city.ride_step(token, trip_id, "complete").await {
                Some(_) => Phase::Cruising,
                None => phase,
            }
        }
        phase => phase,
    }
}

/// One passenger: signs up, requests a ride around a hotspot, follows it on the trip
/// stream (resuming after drops), maybe cancels while waiting, and counts how it ended.
async fn ride(city: Arc<City>, mut rng: StdRng, mut stop: watch::Receiver<bool>) {
    let counters = &city.counters;
    let Ok((201, account)) = city
        .send(
            city.http
                .post(format!("{}/v1/passengers", city.base))
                .json(&json!({"name": "Passenger"})),
        )
        .await
    else {
        return;
    };
    let token = account["token"].as_str().unwrap_or_default().to_string();
    let pickup = city.demand_point(&mut rng);
    let dropoff = pickup.destination(
        rng.random_range(0.0..360.0),
        rng.random_range(1_000.0..6_000.0),
    );
    let key = crate::store::new_id("sim");
    let body = json!({"pickup": pickup, "dropoff": dropoff});
    let sent = Instant::now();
    // A lost answer is retried with the same Idempotency-Key: never two rides.
    let mut trip_id = None;
    let mut backoff = Duration::from_millis(100);
    for _ in 0..8 {
        let request = city.http.post(format!("{}/v1/trips", city.base));
        let request = request
            .bearer_auth(&token)
            .header("Idempotency-Key", &key)
            .json(&body);
        match city.send(request).await {
            Ok((201, trip)) => {
                trip_id = trip["id"].as_str().map(str::to_string);
                break;
            }
            Ok((400..=499, _)) => break,
            _ => {} // counted by `send`; the same key makes the retry safe
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff.mul_f64(rng.random_range(0.5..1.5))) => {}
            _ = crate::server::stopping(&mut stop) => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(3));
    }
    let Some(trip_id) = trip_id else { return };
    Counters::add(&counters.requested);
    city.acknowledged(&trip_id, 1, "requested");
    counters.timing(&trip_id, Some(sent), None);
    let cancel_at = (rng.random_range(0.0..1.0) < city.config.cancel_probability)
        .then(|| Instant::now() + city.scale(Duration::from_secs_f64(rng.random_range(3.0..40.0))));
    let mut last_seq = 0;
    let mut state = String::from("requested");
    let mut backoff = Duration::from_millis(100);
    loop {
        let Ok(mut ws) = city
            .connect(
                &format!("/v1/trips/{trip_id}/ws?after={last_seq}&token={token}"),
                0,
            )
            .await
        else {
            Counters::add(&counters.connect_errors);
            tokio::select! {
                _ = tokio::time::sleep(backoff.mul_f64(rng.random_range(0.5..1.5))) => {}
                _ = crate::server::stopping(&mut stop) => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
            continue;
        };
        loop {
            let cancel_due = cancel_at
                .filter(|_| matches!(state.as_str(), "requested" | "accepted" | "arrived"));
            tokio::select! {
                _ = crate::server::stopping(&mut stop) => {
                    let _ = ws.close(None).await;
                    return;
                }
                _ = sleep_until_some(cancel_due) => {
                    let reason = json!({"reason": "changed plans"});
                    // Counted when its event arrives; acknowledged here.
                    if let Ok((200, trip)) = city.post(&format!("/v1/trips/{trip_id}/cancel"), &token, reason).await {
                        city.acknowledged(&trip_id, trip["seq"].as_i64().unwrap_or(0), "cancelled");
                    }
                    state = String::from("cancel_sent");
                }
                frame = ws.next() => {
                    let Some(Ok(frame)) = frame else { break };
                    let Message::Text(text) = frame else { continue };
                    let Ok(message) = serde_json::from_str::<Value>(&text) else { continue };
                    if message["type"] != "trip_event" {
                        continue;
                    }
                    let seq = message["seq"].as_i64().unwrap_or(0);
                    if let Some(journal) = &city.config.journal {
                        journal.streamed(seq, last_seq);
                    }
                    if seq != last_seq + 1 {
                        continue; // a gap or a repeat: recorded above, not counted twice
                    }
                    last_seq = seq;
                    if state != "cancel_sent" {
                        state = message["trip"]["state"].as_str().unwrap_or_default().to_string();
                    }
                    match message["event"].as_str() {
                        Some("accepted") => Counters::add(&counters.matched),
                        Some("completed") => { Counters::add(&counters.completed); return; }
                        Some("expired") => { Counters::add(&counters.expired); return; }
                        Some("cancelled") => { Counters::add(&counters.cancelled); return; }
                        _ => {}
                    }
                }
            }
        }
        Counters::add(&counters.socket_drops);
    }
}

impl City {
    /// Notes a change the server acknowledged, for the chaos harness.
    fn acknowledged(&self, trip_id: &str, seq: i64, event: &'static str) {
        if let Some(journal) = &self.config.journal {
            journal.acknowledged.lock().unwrap().push(Acknowledged {
                trip_id: trip_id.to_string(),
                seq,
                event,
            });
        }
    }

    /// One ride step by the driver: `Some(true)` done, `Some(false)` refused, `None` no
    /// answer.
    async fn ride_step(&self, token: &str, trip_id: &str, step: &'static str) -> Option<bool> {
        let event = match step {
            "arrive" => "arrived",
            "start" => "started",
            _ => "completed",
        };
        match self
            .post(&format!("/v1/trips/{trip_id}/{step}"), token, json!({}))
            .await
        {
            Ok((200, trip)) => {
                self.acknowledged(trip_id, trip["seq"].as_i64().unwrap_or(0), event);
                Some(true)
            }
            Ok((status, _)) if (400..500).contains(&status) => Some(false),
            _ => None,
        }
    }
}

async fn report_progress(city: Arc<City>, mut stop: watch::Receiver<bool>) {
    let terminal = std::io::stdout().is_terminal();
    let every = if terminal {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(5)
    };
    let mut tick = tokio::time::interval_at(Instant::now() + every, every);
    let mut last_pings = 0;
    let mut last_at = Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = crate::server::stopping(&mut stop) => {
                if terminal {
                    println!();
                }
                return;
            }
        }
        let c = &city.counters;
        let pings = Counters::get(&c.pings);
        let rate = (pings - last_pings) as f64 / last_at.elapsed().as_secs_f64();
        (last_pings, last_at) = (pings, Instant::now());
        let latencies = c.latencies();
        let ms = |q| percentile(&latencies, q).map_or("-".to_string(), |v| format!("{v:.0}"));
        let finished =
            Counters::get(&c.completed) + Counters::get(&c.expired) + Counters::get(&c.cancelled);
        let line = format!(
            "drivers {} | pings/s {:.0} | open {} | matched {} | completed {} | expired {} | cancelled {} | request→offer p50 {} ms p99 {} ms",
            Counters::get(&c.connected),
            rate,
            Counters::get(&c.requested).saturating_sub(finished),
            Counters::get(&c.matched),
            Counters::get(&c.completed),
            Counters::get(&c.expired),
            Counters::get(&c.cancelled),
            ms(0.50),
            ms(0.99),
        );
        if terminal {
            print!("\r\x1b[2K{line}");
            let _ = std::io::stdout().flush();
        } else {
            eprintln!("{line}");
        }
    }
}

/// `pings_before`: pings sent while the fleet was still coming online, left out of the
/// rate.
fn summarize(city: &City, elapsed: Duration, pings_before: u64) -> Summary {
    let c = &city.counters;
    let latencies = c.latencies();
    let (sum, count) = *c.pickup_m_sum.lock().unwrap();
    let requested = Counters::get(&c.requested);
    let completed = Counters::get(&c.completed);
    let expired = Counters::get(&c.expired);
    let cancelled = Counters::get(&c.cancelled);
    let pings = Counters::get(&c.pings);
    Summary {
        drivers: city.config.drivers,
        drivers_connected: Counters::get(&c.connected_max),
        pings_sent: pings,
        pings_per_s: (pings - pings_before) as f64 / elapsed.as_secs_f64().max(f64::EPSILON),
        trips_requested: requested,
        trips_completed: completed,
        trips_expired: expired,
        trips_cancelled: cancelled,
        trips_unfinished: requested.saturating_sub(completed + expired + cancelled),
        offers_received: Counters::get(&c.offers),
        offers_accepted: Counters::get(&c.accepted),
        offers_declined: Counters::get(&c.declined),
        offers_ignored: Counters::get(&c.ignored),
        offer_latency_ms: Percentiles {
            p50: percentile(&latencies, 0.50),
            p99: percentile(&latencies, 0.99),
            samples: latencies.len(),
        },
        pickup_distance_m: Mean {
            mean: (count > 0).then(|| sum / count as f64),
            samples: count,
        },
        connect_errors: Counters::get(&c.connect_errors),
        onboarding_failures: Counters::get(&c.onboarding_failures),
        http_errors: Counters::get(&c.http_errors),
        socket_drops: Counters::get(&c.socket_drops),
        elapsed_s: elapsed.as_secs_f64(),
    }
}

impl Summary {
    /// A table for people.
    pub fn table(&self) -> String {
        let ms = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.1} ms"));
        let rows = [
            (
                "drivers (connected at most)",
                format!("{} ({})", self.drivers, self.drivers_connected),
            ),
            (
                "pings sent",
                format!("{} ({:.0}/s)", self.pings_sent, self.pings_per_s),
            ),
            ("trips requested", self.trips_requested.to_string()),
            ("  completed", self.trips_completed.to_string()),
            ("  expired", self.trips_expired.to_string()),
            ("  cancelled", self.trips_cancelled.to_string()),
            ("  unfinished", self.trips_unfinished.to_string()),
            ("offers received", self.offers_received.to_string()),
            (
                "  accepted / declined / ignored",
                format!(
                    "{} / {} / {}",
                    self.offers_accepted, self.offers_declined, self.offers_ignored
                ),
            ),
            ("request → offer p50", ms(self.offer_latency_ms.p50)),
            ("request → offer p99", ms(self.offer_latency_ms.p99)),
            (
                "mean pickup distance",
                self.pickup_distance_m
                    .mean
                    .map_or("-".into(), |m| format!("{m:.0} m")),
            ),
            (
                "errors: connect / http / socket drops",
                format!(
                    "{} / {} / {}",
                    self.connect_errors, self.http_errors, self.socket_drops
                ),
            ),
            ("elapsed", format!("{:.1} s", self.elapsed_s)),
        ];
        let mut table = String::new();
        for (name, value) in rows {
            table.push_str(&format!("{name:<40} {value}\n"));
        }
        table
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5y").is_err());
    }

    #[test]
    fn hotspot_mix_parses_and_rejects_unknown_places() {
        let mix = parse_hotspots("gangnam=3, hongdae").unwrap();
        assert_eq!(mix.len(), 2);
        assert_eq!(mix[1].1, 1.0);
        assert!(parse_hotspots("atlantis=1").is_err());
        assert!(parse_hotspots("gangnam=0").is_err());
        assert!(parse_hotspots("gangnam=-1").is_err());
    }

    #[test]
    fn drivers_reach_their_target_and_cruisers_stay_in_town() {
        let mut rng = StdRng::seed_from_u64(1);
        let centre = LatLng::new(CITY_CENTRE.0, CITY_CENTRE.1).unwrap();
        let start = centre.destination(90.0, 1_000.0);
        let mut position = start;
        let mut heading = 0.0;
        let phase = Phase::ToPickup {
            trip_id: "t".into(),
            pickup: centre,
            dropoff: centre,
        };
        let mut seconds = 0;
        while !advance(&mut position, &mut heading, &phase, 1.0, &centre, &mut rng) {
            seconds += 1;
            assert!(seconds < 200);
        }
        assert_eq!(position, centre);
        assert!((85..=95).contains(&seconds), "1 km at 11 m/s: {seconds}");
        let mut far = centre.destination(0.0, 20_000.0);
        for _ in 0..5_000 {
            advance(
                &mut far,
                &mut heading,
                &Phase::Cruising,
                4.0,
                &centre,
                &mut rng,
            );
        }
        assert!(far.distance_m(&centre) < CITY_RADIUS_M + 100.0);
    }

    #[test]
    fn offer_latency_counts_the_first_offer_in_either_order() {
        let counters = Counters::default();
        let t0 = Instant::now();
        counters.timing("a", Some(t0), None);
        counters.timing("a", None, Some(t0 + Duration::from_millis(30)));
        counters.timing("a", None, Some(t0 + Duration::from_millis(90))); // a second offer
        counters.timing("b", None, Some(t0 + Duration::from_millis(5))); // offer before answer
        counters.timing("b", Some(t0), None);
        assert_eq!(counters.latencies(), vec![5.0, 30.0]);
    }
}
