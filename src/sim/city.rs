//! What every simulated client shares: the servers (several for a cluster), the HTTP
//! client and socket helpers, the demand hotspots, and the counters.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::Duration,
};

use anyhow::Context;
use futures_util::SinkExt;
use rand::{RngExt, rngs::StdRng};
use serde::{Serialize, de::DeserializeOwned};
use tokio::{net::TcpSocket, time::Instant};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{Message, protocol::WebSocketConfig},
};

use super::{Acknowledged, SimConfig, report::Counters};
use crate::{geometry::LatLng, trip::Trip};

/// Demand hotspots of Seoul, by name.
pub const HOTSPOTS: &[(&str, f64, f64)] = &[
    ("gangnam", 37.4979, 127.0276),
    ("hongdae", 37.5563, 126.9236),
    ("jongno", 37.5704, 126.9920),
    ("yeouido", 37.5219, 126.9245),
    ("jamsil", 37.5133, 127.1001),
    ("seoul_station", 37.5547, 126.9707),
    ("itaewon", 37.5345, 126.9946),
];
/// One source address serves at most this many driver sockets (ephemeral ports).
const SOCKETS_PER_SOURCE_ADDRESS: u32 = 20_000;
/// Small client buffers: tungstenite's defaults would cost 128 KiB+ per driver.
const CLIENT_BUFFER_BYTES: usize = 4 * 1024;

pub type Socket = WebSocketStream<tokio::net::TcpStream>;

/// One server (node) clients may talk to.
pub struct Server {
    pub base: String,
    ws_base: String,
    address: SocketAddr,
}

/// What an HTTP call came to.
#[derive(Debug)]
pub enum Answer<T> {
    /// 2xx, with its body.
    Done(T),
    /// 4xx: the server refused; retrying the same request will not help.
    Refused(u16),
    /// 429: too many requests from this client; retry after this long.
    Later(Duration),
    /// No answer, or 5xx: nothing is known to have happened; retry (elsewhere).
    Lost,
}

pub struct City {
    pub config: SimConfig,
    http: reqwest::Client,
    pub servers: Vec<Server>,
    source_addresses: Vec<IpAddr>,
    hotspots: Vec<(LatLng, f64)>,
    pub counters: Counters,
    /// Tokens of passengers who have no ride under way: a new ride takes one before
    /// signing a new passenger up, as a real city reuses its riders (and as the server's
    /// sign-up limit per address expects).
    free_passengers: std::sync::Mutex<Vec<String>>,
    /// Drivers cruising without a trip or an offer, and where: whether a request found a
    /// free driver in range when it was made (the report tells those apart from the ones
    /// that had to wait for a driver to become free).
    idle: std::sync::Mutex<std::collections::HashMap<usize, LatLng>>,
}

/// A request with a free driver this close (the widest default search radius) could be
/// offered at once.
pub const IN_RANGE_M: f64 = 10_000.0;

impl City {
    /// Driver `index` is free at `position` (`Some`), or busy (`None`).
    pub fn set_idle(&self, index: usize, position: Option<LatLng>) {
        let mut idle = self.idle.lock().unwrap();
        match position {
            Some(position) => idle.insert(index, position),
            None => idle.remove(&index),
        };
    }

    /// Whether some free driver is within [`IN_RANGE_M`] of `at`.
    pub fn free_driver_near(&self, at: LatLng) -> bool {
        self.idle
            .lock()
            .unwrap()
            .values()
            .any(|position| position.distance_m(&at) <= IN_RANGE_M)
    }

    pub async fn new(config: SimConfig) -> anyhow::Result<City> {
        let mut servers = Vec::new();
        for base in config
            .server
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            let base = base.trim_end_matches('/').to_string();
            let (scheme, rest) = base
                .split_once("://")
                .context("--server must look like http://host:port")?;
            anyhow::ensure!(
                scheme == "http",
                "--server must be http:// URLs (TLS is not supported by the simulator)"
            );
            let host_port = rest.split('/').next().unwrap_or(rest);
            let address = tokio::net::lookup_host(host_port)
                .await
                .with_context(|| format!("resolving {host_port}"))?
                .find(SocketAddr::is_ipv4)
                .context("the server needs an IPv4 address")?;
            servers.push(Server {
                ws_base: base.replacen("http://", "ws://", 1),
                base,
                address,
            });
        }
        anyhow::ensure!(!servers.is_empty(), "--server names no server");
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
        let loopback = servers.iter().all(|s| s.address.ip().is_loopback());
        let source_addresses = match (loopback, config.source_addresses) {
            (false, _) => Vec::new(),
            (true, 0) => {
                source_addresses(config.drivers.div_ceil(SOCKETS_PER_SOURCE_ADDRESS).max(1))
            }
            (true, n) => source_addresses(n),
        };
        Ok(City {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(15))
                .build()?,
            servers,
            source_addresses,
            hotspots,
            counters: Counters::default(),
            free_passengers: std::sync::Mutex::default(),
            idle: std::sync::Mutex::default(),
            config,
        })
    }

    /// A passenger without a ride under way, if one is free.
    pub fn free_passenger(&self) -> Option<String> {
        self.free_passengers.lock().unwrap().pop()
    }

    /// The passenger's ride is over: it may ride again.
    pub fn passenger_free(&self, token: String) {
        self.free_passengers.lock().unwrap().push(token);
    }

    pub fn scale(&self, duration: Duration) -> Duration {
        duration.div_f64(self.config.time_scale.max(0.01))
    }

    /// A server to start on.
    pub fn pick_server(&self, rng: &mut StdRng) -> usize {
        rng.random_range(0..self.servers.len())
    }

    /// Another server than `current`, after it failed (the same one if it is the only).
    pub fn other_server(&self, current: usize, rng: &mut StdRng) -> usize {
        if self.servers.len() < 2 {
            return current;
        }
        (current + rng.random_range(1..self.servers.len())) % self.servers.len()
    }

    /// A point around a hotspot, drawn by the demand mix.
    pub fn demand_point(&self, rng: &mut StdRng) -> LatLng {
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

    /// POSTs `body` to `path` on `server`. Server errors and lost answers count as HTTP
    /// errors.
    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        server: usize,
        path: &str,
        token: Option<&str>,
        idempotency_key: Option<&str>,
        body: &B,
    ) -> Answer<T> {
        let mut request = self
            .http
            .post(format!("{}{path}", self.servers[server].base))
            .json(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(key) = idempotency_key {
            request = request.header("Idempotency-Key", key);
        }
        let answer = match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                let retry_after = response
                    .headers()
                    .get("retry-after")
                    .and_then(|value| value.to_str().ok())
                    .and_then(|value| value.parse::<u64>().ok());
                match (status, response.bytes().await) {
                    (429, _) => Answer::Later(Duration::from_secs(retry_after.unwrap_or(1))),
                    (200..=299, Ok(bytes)) => {
                        let body: &[u8] = if bytes.is_empty() { b"null" } else { &bytes };
                        match serde_json::from_slice(body) {
                            Ok(value) => Answer::Done(value),
                            Err(_) => Answer::Lost,
                        }
                    }
                    (400..=499, _) => Answer::Refused(status),
                    _ => Answer::Lost,
                }
            }
            Err(_) => Answer::Lost,
        };
        if matches!(answer, Answer::Lost) {
            Counters::add(&self.counters.http_errors);
        }
        answer
    }

    /// How long a socket may stay silent before the client asks (a WebSocket ping): one
    /// ping interval, at least a second. Three times this without a word and the server
    /// is taken for gone.
    pub fn probe_after(&self) -> Duration {
        Duration::from_millis(self.config.ping_interval_ms).max(Duration::from_secs(1))
    }

    /// A silence watch for a socket just opened.
    pub fn liveness(&self) -> Liveness {
        Liveness::new(self.probe_after())
    }

    /// Opens a WebSocket at `path` on `server`, from the source address for client
    /// `index`. A server that accepts the connection but never answers the handshake (a
    /// stopped process: its kernel still accepts) is given up after three probe times.
    pub async fn connect(&self, server: usize, path: &str, index: usize) -> anyhow::Result<Socket> {
        tokio::time::timeout(self.probe_after() * 3, self.open(server, path, index))
            .await
            .context("no WebSocket handshake: the server is silent")?
    }

    async fn open(&self, server: usize, path: &str, index: usize) -> anyhow::Result<Socket> {
        let socket = TcpSocket::new_v4()?;
        if let Some(source) = self
            .source_addresses
            .get(index % self.source_addresses.len().max(1))
        {
            socket.bind(SocketAddr::new(*source, 0))?;
        }
        let server = &self.servers[server];
        let stream = socket.connect(server.address).await?;
        stream.set_nodelay(true)?;
        let config = WebSocketConfig::default()
            .read_buffer_size(CLIENT_BUFFER_BYTES)
            .write_buffer_size(0)
            .max_message_size(Some(1 << 20));
        let url = format!("{}{path}", server.ws_base);
        let (ws, _) =
            tokio_tungstenite::client_async_with_config(url, stream, Some(config)).await?;
        Ok(ws)
    }

    /// Notes a change the server acknowledged, for the chaos harness.
    pub fn acknowledged(&self, trip_id: &str, seq: i64, event: &'static str) {
        if let Some(journal) = &self.config.journal {
            journal.acknowledged.lock().unwrap().push(Acknowledged {
                trip_id: trip_id.to_string(),
                seq,
                event,
                at: Instant::now(),
            });
        }
    }

    /// One ride step by the driver: `Some(true)` done, `Some(false)` refused, `None` no
    /// answer (try again, perhaps on another server).
    pub async fn ride_step(
        &self,
        server: usize,
        token: &str,
        trip_id: &str,
        step: &'static str,
    ) -> Option<bool> {
        let event = match step {
            "arrive" => "arrived",
            "start" => "started",
            _ => "completed",
        };
        let path = format!("/v1/trips/{trip_id}/{step}");
        match self
            .post::<_, Trip>(server, &path, Some(token), None, &())
            .await
        {
            Answer::Done(trip) => {
                self.acknowledged(trip_id, trip.seq, event);
                Some(true)
            }
            Answer::Refused(_) => Some(false),
            Answer::Lost | Answer::Later(_) => None,
        }
    }
}

/// Tells a live server from a silent one. A stopped or cut-off node keeps its TCP
/// connections open and its kernel takes whatever is sent, so a client that only talks
/// would wait on it forever (a driver never offered anything, a passenger never told).
/// Any frame heard counts; after `probe_after` of silence the client sends a WebSocket
/// ping (every server answers one at once), and after three times that it goes to
/// another node.
pub struct Liveness {
    probe_after: Duration,
    last_heard: Instant,
    probed_at: Option<Instant>,
}

/// What a silence watch says when it is due.
#[derive(Debug, PartialEq, Eq)]
pub enum Silence {
    /// Heard from recently enough.
    Fine,
    /// Ask: send a WebSocket ping.
    Probe,
    /// Silent too long: the server is gone.
    Gone,
}

impl Liveness {
    pub fn new(probe_after: Duration) -> Liveness {
        Liveness {
            probe_after,
            last_heard: Instant::now(),
            probed_at: None,
        }
    }

    /// A frame arrived.
    pub fn heard(&mut self) {
        self.last_heard = Instant::now();
        self.probed_at = None;
    }

    /// When [`Self::check`] has something new to say.
    pub fn due(&self) -> Instant {
        self.probed_at.unwrap_or(self.last_heard) + self.probe_after
    }

    /// What is due when [`Self::due`] comes: a probe sent on `ws` if it is time for one.
    /// False when the server is gone (silent too long, or the probe could not be sent).
    pub async fn tend(&mut self, ws: &mut Socket) -> bool {
        match self.check(Instant::now()) {
            Silence::Fine => true,
            Silence::Probe => ws.send(Message::Ping(Default::default())).await.is_ok(),
            Silence::Gone => false,
        }
    }

    pub fn check(&mut self, now: Instant) -> Silence {
        if now.duration_since(self.last_heard) >= self.probe_after * 3 {
            Silence::Gone
        } else if now.duration_since(self.probed_at.unwrap_or(self.last_heard)) >= self.probe_after
        {
            self.probed_at = Some(now);
            Silence::Probe
        } else {
            Silence::Fine
        }
    }
}

/// Sleeps until `at`, or forever without one (a branch of a `select!` that is off).
pub async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn source_addresses(count: u32) -> Vec<IpAddr> {
    (0..count.clamp(1, 250))
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + i as u8)))
        .collect()
}

pub fn parse_hotspots(text: &str) -> anyhow::Result<Vec<(LatLng, f64)>> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hotspot_mix_parses_and_rejects_unknown_places() {
        let mix = parse_hotspots("gangnam=3, hongdae").unwrap();
        assert_eq!(mix.len(), 2);
        assert_eq!(mix[1].1, 1.0);
        assert!(parse_hotspots("atlantis=1").is_err());
        assert!(parse_hotspots("gangnam=0").is_err());
        assert!(parse_hotspots("gangnam=-1").is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_server_is_asked_then_given_up() {
        let second = Duration::from_secs(1);
        let mut watch = Liveness::new(second);
        let start = Instant::now();
        assert_eq!(watch.check(start), Silence::Fine);
        assert_eq!(watch.due(), start + second);

        tokio::time::advance(second).await;
        assert_eq!(watch.check(Instant::now()), Silence::Probe);
        assert_eq!(
            watch.check(Instant::now()),
            Silence::Fine,
            "one probe per interval"
        );
        tokio::time::advance(second).await;
        assert_eq!(watch.check(Instant::now()), Silence::Probe);
        // An answer (a pong, or anything) starts the count again.
        tokio::time::advance(second / 2).await;
        watch.heard();
        tokio::time::advance(second * 2).await;
        assert_eq!(watch.check(Instant::now()), Silence::Probe);
        tokio::time::advance(second).await;
        assert_eq!(watch.check(Instant::now()), Silence::Gone);
    }
}
