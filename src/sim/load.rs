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

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use clap::Args;
use rand::{RngExt, rngs::StdRng};
use serde::Serialize;
use tokio::{sync::Semaphore, task::JoinSet, time::Instant};

pub(super) mod fleet;
mod wire;

use super::{driver::plate, parse_duration};
use crate::{
    geometry::LatLng,
    protocol::rest::{Credentials, DriverSignup, Vehicle},
};
use fleet::{Fleet, Pinging, get};

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
    let target = Target::resolve(&config.server).await?;
    let metrics_url = config
        .metrics_url
        .clone()
        .unwrap_or_else(|| format!("{}/metrics", target.base));
    raise_open_file_limit(config.drivers)?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;

    eprintln!("onboarding {} drivers…", config.drivers);
    let tokens = onboard_all(&http, &target.base, &config.operator_token, config.drivers).await?;

    eprintln!("connecting {} sockets…", tokens.len());
    let pinging = Pinging {
        rate: config.rate,
        burst: config.burst,
        seed: config.seed,
    };
    let fleet = Fleet::open(target.address, &target.host_port, &tokens, &pinging, None).await;
    let counters = fleet.counters.clone();
    eprintln!(
        "{} connected ({} failed); pinging, {} s warm-up then {} s measured",
        get(&counters.connected),
        get(&counters.connect_failures),
        config.warmup.as_secs_f64(),
        config.duration.as_secs_f64()
    );
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
    fleet.stop().await;
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

/// The one server node a run drives.
pub(super) struct Target {
    /// `http://host:port`, no trailing slash.
    pub base: String,
    pub host_port: String,
    pub address: SocketAddr,
}

impl Target {
    pub async fn resolve(server: &str) -> anyhow::Result<Target> {
        let base = server.trim_end_matches('/').to_string();
        let host_port = base
            .strip_prefix("http://")
            .context("--server must look like http://host:port")?
            .to_string();
        let address = tokio::net::lookup_host(&host_port)
            .await
            .with_context(|| format!("resolving {host_port}"))?
            .find(SocketAddr::is_ipv4)
            .context("the server needs an IPv4 address")?;
        Ok(Target {
            base,
            host_port,
            address,
        })
    }
}

/// One file per driver socket, and some to spare for everything else.
pub(super) fn raise_open_file_limit(drivers: usize) -> anyhow::Result<()> {
    let wanted = drivers as u64 + 256;
    let limit = rlimit::increase_nofile_limit(wanted).unwrap_or(0);
    anyhow::ensure!(
        limit >= wanted,
        "open-file limit is {limit}: {drivers} drivers need {wanted}"
    );
    Ok(())
}

pub(super) async fn onboard_all(
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
/// A point of the part of Seoul the generated drivers start in (and `hail peak`'s
/// passengers are picked up in).
pub(super) fn random_point_in_seoul(rng: &mut StdRng) -> LatLng {
    LatLng::new(
        rng.random_range(37.45..37.70),
        rng.random_range(126.80..127.18),
    )
    .expect("inside Seoul")
}

pub(super) async fn accepted_pings(url: &str) -> anyhow::Result<f64> {
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
