//! `hail load`: peak ingest, measured honestly (issue 14). Many drivers, onboarded through
//! the operator API like the simulator's, each holding one socket and sending location
//! pings within the per-socket budget (at most 10 frames a second, the server's pings
//! answered and nothing else sent), for a fixed window once every socket is open. The
//! figure is what the server *accepted*: its own `hail_location_pings_total` read from
//! `/metrics` at both ends of the window, not what this generator sent.
//!
//! The generator is meant to cost the server's machine little: each socket's frames are
//! WebSocket frames built once before the run (masked JSON text, one short path per
//! driver), written straight to its TCP stream — `burst` of them in one write — and what
//! the server sends back is only framed far enough to count errors, answer pings and see
//! a close.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
use clap::Args;
use rand::{SeedableRng, rngs::StdRng};
use serde::Serialize;
use tokio::{
    net::TcpStream,
    sync::Semaphore,
    task::JoinSet,
    time::{Instant, MissedTickBehavior},
};

mod wire;

use super::{driver::plate, parse_duration};
use crate::protocol::rest::{Credentials, DriverSignup, Vehicle};
use wire::{connect, contains, driver_frames, handshake, server_frame};

/// Sockets per 127.0.0.x source address, so ephemeral ports never run out.
const SOCKETS_PER_SOURCE: usize = 10_000;
/// Tasks writing the pings, each to its share of the sockets.
const PACERS: usize = 2;

#[derive(Args, Debug, Clone)]
pub struct LoadConfig {
    /// The hail server (one node), `http://host:port`.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// Where the server's `/metrics` is (default: `<server>/metrics`).
    #[arg(long)]
    pub metrics_url: Option<String>,
    /// An operator's token, to onboard the drivers.
    #[arg(long, env = "HAIL_OPERATOR_TOKEN")]
    pub operator_token: String,
    /// Driver sockets (one process may hold up to its open-file limit).
    #[arg(long, default_value_t = 1_000)]
    pub drivers: usize,
    /// Pings a second each socket sends (the server allows 10 frames a second, 20 in a
    /// burst; the answers to its keepalive pings count too, hence a little below).
    #[arg(long, default_value_t = 9.5)]
    pub rate: f64,
    /// Pings written at once per socket (one TCP write of `burst` frames every
    /// `burst / rate` seconds); 1 spreads them evenly.
    #[arg(long, default_value_t = 1)]
    pub burst: usize,
    /// Pinging before the measured window starts.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// The measured window.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub duration: Duration,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Print one JSON line with the figures at the end.
    #[arg(long)]
    pub json: bool,
}

#[derive(Default)]
struct Counters {
    connected: AtomicU64,
    connect_failures: AtomicU64,
    frames_sent: AtomicU64,
    rate_limited: AtomicU64,
    error_replies: AtomicU64,
    other_messages: AtomicU64,
    server_pings: AtomicU64,
    writes_skipped: AtomicU64,
    dropped: AtomicU64,
}

fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// What a run measured.
#[derive(Debug, Serialize)]
pub struct LoadReport {
    pub drivers: usize,
    pub connected: u64,
    pub connect_failures: u64,
    pub rate_per_socket: f64,
    pub burst: usize,
    pub window_s: f64,
    /// The server's `hail_location_pings_total` growth over the window, per second.
    pub accepted_pings_per_s: f64,
    /// Frames this generator wrote in the window, per second.
    pub sent_frames_per_s: f64,
    /// Over the whole run (not just the window).
    pub rate_limited: u64,
    pub error_replies: u64,
    /// Writes not made because the socket's send buffer was full.
    pub writes_skipped: u64,
    pub dropped_sockets: u64,
}

pub async fn run(config: LoadConfig) -> anyhow::Result<LoadReport> {
    anyhow::ensure!(
        config.rate > 0.0 && config.rate.is_finite(),
        "--rate must be positive"
    );
    anyhow::ensure!((1..=20).contains(&config.burst), "--burst must be 1 to 20");
    let base = config.server.trim_end_matches('/').to_string();
    let host_port = base
        .strip_prefix("http://")
        .context("--server must look like http://host:port")?
        .to_string();
    let address = tokio::net::lookup_host(&host_port)
        .await
        .with_context(|| format!("resolving {host_port}"))?
        .find(SocketAddr::is_ipv4)
        .context("the server needs an IPv4 address")?;
    let metrics_url = config
        .metrics_url
        .clone()
        .unwrap_or_else(|| format!("{base}/metrics"));
    let wanted = config.drivers as u64 + 256;
    let limit = rlimit::increase_nofile_limit(wanted).unwrap_or(0);
    anyhow::ensure!(
        limit >= wanted,
        "open-file limit is {limit}: {} drivers need {wanted}",
        config.drivers
    );
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;

    eprintln!("onboarding {} drivers…", config.drivers);
    let tokens = onboard_all(&http, &base, &config.operator_token, config.drivers).await?;

    eprintln!("connecting {} sockets…", tokens.len());
    let counters = Arc::new(Counters::default());
    let connecting = Arc::new(Semaphore::new(256));
    let mut sockets = JoinSet::new();
    let mut rng = StdRng::seed_from_u64(config.seed);
    for (index, token) in tokens.into_iter().enumerate() {
        let writes = driver_frames(&mut rng, config.burst, index as u32);
        let request = handshake(&host_port, &token);
        let source = IpAddr::V4(Ipv4Addr::new(
            127,
            0,
            0,
            2 + (index / SOCKETS_PER_SOURCE) as u8,
        ));
        let (counters, connecting) = (counters.clone(), connecting.clone());
        sockets.spawn(async move {
            let _permit = connecting.acquire().await;
            match connect(
                address,
                address.ip().is_loopback().then_some(source),
                &request,
            )
            .await
            {
                Ok((stream, leftover)) => {
                    add(&counters.connected, 1);
                    Some((stream, leftover, writes))
                }
                Err(_) => {
                    add(&counters.connect_failures, 1);
                    None
                }
            }
        });
    }
    let (stop, _) = tokio::sync::watch::channel(false);
    let mut readers = JoinSet::new();
    let mut drivers = Vec::with_capacity(config.drivers);
    while let Some(socket) = sockets.join_next().await {
        let Some((stream, leftover, writes)) = socket? else {
            continue;
        };
        let socket = Arc::new(Socket {
            stream,
            pong_due: AtomicBool::new(false),
            closed: AtomicBool::new(false),
        });
        let (counters, mut stop) = (counters.clone(), stop.subscribe());
        let reading = socket.clone();
        readers.spawn(async move { read(&reading, leftover, &counters, &mut stop).await });
        drivers.push(Driver {
            socket,
            writes,
            next: 0,
            unsent: Vec::new(),
        });
    }
    eprintln!(
        "{} connected ({} failed); pinging, {} s warm-up then {} s measured",
        get(&counters.connected),
        get(&counters.connect_failures),
        config.warmup.as_secs_f64(),
        config.duration.as_secs_f64()
    );
    // Each pacer writes to its share of the sockets in turn, evenly spread over a period.
    let period = Duration::from_secs_f64(config.burst as f64 / config.rate);
    let per_pacer = drivers.len().div_ceil(PACERS).max(1);
    let mut pacers = JoinSet::new();
    let go = Instant::now();
    while !drivers.is_empty() {
        let share: Vec<Driver> = drivers.drain(..per_pacer.min(drivers.len())).collect();
        let (counters, stop) = (counters.clone(), stop.subscribe());
        let burst = config.burst as u64;
        pacers.spawn(async move { pace(share, go, period, burst, &counters, stop).await });
    }
    tokio::time::sleep(config.warmup).await;
    let (t0, pings0, sent0) = (
        Instant::now(),
        accepted_pings(&metrics_url).await?,
        get(&counters.frames_sent),
    );
    tokio::time::sleep(config.duration).await;
    let (t1, pings1, sent1) = (
        Instant::now(),
        accepted_pings(&metrics_url).await?,
        get(&counters.frames_sent),
    );
    let _ = stop.send(true);
    while pacers.join_next().await.is_some() {}
    while readers.join_next().await.is_some() {}
    let window = (t1 - t0).as_secs_f64();
    Ok(LoadReport {
        drivers: config.drivers,
        connected: get(&counters.connected),
        connect_failures: get(&counters.connect_failures),
        rate_per_socket: config.rate,
        burst: config.burst,
        window_s: window,
        accepted_pings_per_s: (pings1 - pings0) / window,
        sent_frames_per_s: (sent1 - sent0) as f64 / window,
        rate_limited: get(&counters.rate_limited),
        error_replies: get(&counters.error_replies),
        writes_skipped: get(&counters.writes_skipped),
        dropped_sockets: get(&counters.dropped),
    })
}

impl LoadReport {
    pub fn table(&self) -> String {
        format!(
            "drivers connected        {} of {} ({} failed)\n\
             per socket               {} pings/s, {} per write\n\
             window                   {:.1} s\n\
             accepted (server count)  {:.0} pings/s\n\
             sent (generator)         {:.0} frames/s\n\
             rate-limited replies     {}\n\
             other error replies      {}\n\
             writes skipped (full)    {}\n\
             sockets dropped          {}\n",
            self.connected,
            self.drivers,
            self.connect_failures,
            self.rate_per_socket,
            self.burst,
            self.window_s,
            self.accepted_pings_per_s,
            self.sent_frames_per_s,
            self.rate_limited,
            self.error_replies,
            self.writes_skipped,
            self.dropped_sockets,
        )
    }
}

async fn onboard_all(
    http: &reqwest::Client,
    base: &str,
    operator_token: &str,
    drivers: usize,
) -> anyhow::Result<Vec<String>> {
    let onboarding = Arc::new(Semaphore::new(32));
    let mut signups = JoinSet::new();
    for index in 0..drivers {
        let (http, onboarding) = (http.clone(), onboarding.clone());
        let url = format!("{base}/v1/drivers");
        let token = operator_token.to_string();
        signups.spawn(async move {
            let _permit = onboarding.acquire().await;
            let signup = DriverSignup {
                name: format!("Load driver {index}"),
                vehicle: Vehicle {
                    plate: plate(index),
                },
            };
            for _ in 0..5 {
                let answer = http
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&signup)
                    .send()
                    .await;
                match answer {
                    Ok(response) if response.status().is_success() => {
                        return Ok(response.json::<Credentials>().await?.token);
                    }
                    Ok(response) if response.status().as_u16() == 429 => {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    Ok(response) => anyhow::bail!("onboarding answered {}", response.status()),
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
            anyhow::bail!("onboarding a driver failed five times")
        });
    }
    let mut tokens = Vec::with_capacity(drivers);
    while let Some(token) = signups.join_next().await {
        tokens.push(token??);
    }
    Ok(tokens)
}

/// The server's count of accepted location pings.
async fn accepted_pings(url: &str) -> anyhow::Result<f64> {
    // A fresh connection: a pooled one may have been closed by the server meanwhile.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(0)
        .build()?;
    let text = http
        .get(url)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    text.lines()
        .find_map(|line| line.strip_prefix("hail_location_pings_total "))
        .and_then(|value| value.trim().parse().ok())
        .with_context(|| format!("no hail_location_pings_total at {url}"))
}

/// One open driver socket, shared by its reader and its pacer.
struct Socket {
    stream: TcpStream,
    /// The server pinged: the pacer sends the pong with its next write.
    pong_due: AtomicBool,
    closed: AtomicBool,
}

/// What a pacer keeps for one socket.
struct Driver {
    socket: Arc<Socket>,
    writes: Vec<Vec<u8>>,
    next: usize,
    /// The rest of a write the kernel took only part of, sent before anything else.
    unsent: Vec<u8>,
}

/// A client's pong (empty, masked), answering the server's empty keepalive ping.
const PONG: [u8; 6] = [0x8A, 0x80, 1, 2, 3, 4];

/// Writes to `drivers` in turn so each is written once a `period`, evenly spread: by
/// time `t` after `go`, write number `t × n / period` is due. Never early, so a socket
/// never exceeds its rate however late the pacer runs (a late pacer catches up, within
/// the server's burst, which filled while it was late). Writes never wait: a socket the
/// kernel will not take more from now is skipped this time (counted).
async fn pace(
    mut drivers: Vec<Driver>,
    go: Instant,
    period: Duration,
    burst: u64,
    counters: &Counters,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let n = drivers.len() as u128;
    let mut done: u128 = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let due = go.elapsed().as_nanos() * n / period.as_nanos().max(1);
        // A pacer behind its schedule still lets the other tasks run (the readers, the
        // clock of the measurement) every so many writes.
        let mut batch = 0;
        while done < due {
            batch += 1;
            if batch % 512 == 0 {
                tokio::task::yield_now().await;
            }
            let driver = &mut drivers[(done % n) as usize];
            done += 1;
            if driver.socket.closed.load(Ordering::Relaxed) {
                continue;
            }
            if driver.socket.pong_due.swap(false, Ordering::Relaxed) {
                driver.unsent.extend_from_slice(&PONG);
            }
            if !driver.unsent.is_empty() {
                if let Ok(written) = driver.socket.stream.try_write(&driver.unsent) {
                    driver.unsent.drain(..written);
                }
                if !driver.unsent.is_empty() {
                    add(&counters.writes_skipped, 1);
                    continue;
                }
            }
            let write = &driver.writes[driver.next];
            driver.next = (driver.next + 1) % driver.writes.len();
            match driver.socket.stream.try_write(write) {
                Ok(written) => {
                    driver.unsent.extend_from_slice(&write[written..]);
                    add(&counters.frames_sent, burst);
                }
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                    add(&counters.writes_skipped, 1);
                }
                Err(_) => {
                    driver.socket.closed.store(true, Ordering::Relaxed);
                }
            }
        }
    }
}

/// Reads what the server sends on one socket until it closes or the run stops: counts
/// error replies, notes pings to answer.
async fn read(
    socket: &Socket,
    mut read: Vec<u8>,
    counters: &Counters,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) {
    let mut chunk = [0u8; 1024];
    loop {
        while let Some((opcode, payload, used)) = server_frame(&read) {
            match opcode {
                0x1 if contains(payload, b"\"rate_limited\"") => add(&counters.rate_limited, 1),
                0x1 if contains(payload, b"\"type\":\"error\"") => add(&counters.error_replies, 1),
                0x1 => add(&counters.other_messages, 1),
                0x8 => {
                    socket.closed.store(true, Ordering::Relaxed);
                    add(&counters.dropped, 1);
                    return;
                }
                0x9 => {
                    add(&counters.server_pings, 1);
                    socket.pong_due.store(true, Ordering::Relaxed);
                }
                _ => {}
            }
            read.drain(..used);
        }
        tokio::select! {
            ready = socket.stream.readable() => if ready.is_err() {
                socket.closed.store(true, Ordering::Relaxed);
                add(&counters.dropped, 1);
                return;
            },
            _ = stop.changed() => return,
        }
        match socket.stream.try_read(&mut chunk) {
            Ok(n) if n > 0 => read.extend_from_slice(&chunk[..n]),
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
            _ => {
                socket.closed.store(true, Ordering::Relaxed);
                add(&counters.dropped, 1);
                return;
            }
        }
    }
}
