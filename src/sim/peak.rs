//! `hail peak`: issue 14's evening peak at the process limit — every driver pinging every
//! second, passengers requesting rides at a fixed rate, optionally an operator console
//! watching — with a generator cheap enough to leave the machine to the server.
//!
//! The drivers are `hail load`'s sockets (frames built before the run, written by two
//! pacer tasks, [`super::load::fleet`]); only what the server sends them is read, and only
//! offer frames are parsed: the offered driver accepts after a think time, then arrives,
//! starts and completes the ride a step apart, so the fleet stays available and the
//! server does the writes a city finishing as many rides as it starts does.
//!
//! Passengers are accounts signed up before the run, one per request, so none has an
//! active trip when it asks. They hold no trip stream: the figure is request → offer on
//! the driver's socket, and a stream per open trip would cost the server files it does
//! not have at the limit (see the README). Request → offer is measured as `hail sim`
//! measures it: from sending `POST /v1/trips` to the offer frame being read off the
//! chosen driver's socket, both on this process's clock.

mod console;
mod trips;

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use clap::Args;
use serde::Serialize;
use tokio::{sync::mpsc, time::Instant};

use super::{
    documented_defaults,
    load::{
        Target, accepted_pings,
        fleet::{Fleet, Pinging, get},
        onboard_all, raise_open_file_limit,
    },
    parse_duration,
    report::Percentiles,
};
use console::{Console, ConsoleReport};
use trips::{Errors, Trips};

/// Trips one run may request (a passenger account is signed up for each first).
const MAX_REQUESTS: usize = 1_000_000;

/// Offer frames waiting to be handled.
const OFFER_QUEUE: usize = 4_096;

#[derive(Args, Debug, Clone)]
pub struct PeakConfig {
    /// The hail server (one node), `http://host:port`.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// Where the server's `/metrics` is (default: `<server>/metrics`).
    #[arg(long)]
    pub metrics_url: Option<String>,
    /// An operator's token, to onboard the drivers (and to open the console).
    #[arg(long, env = "HAIL_OPERATOR_TOKEN", hide_env_values = true)]
    pub operator_token: String,
    /// Driver sockets (one process may hold up to its open-file limit).
    #[arg(long, default_value_t = 1_000)]
    pub drivers: usize,
    /// How often each driver sends its position.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(100..))]
    pub ping_interval_ms: u64,
    /// Trip requests a second, evenly spaced, through the measured window.
    #[arg(long, default_value_t = 60.0)]
    pub requests_per_s: f64,
    /// Pinging (and the console open) before the first request.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// The measured window: requests are sent for this long.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub duration: Duration,
    /// After the window, how long offers and answers may still arrive.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub drain: Duration,
    /// How long an offered driver waits before accepting (offers lapse after 15 s).
    #[arg(long, default_value_t = 1_000)]
    pub think_time_ms: u64,
    /// Between accept and arrive, arrive and start, start and complete.
    #[arg(long, default_value_t = 1_000)]
    pub ride_step_ms: u64,
    /// Keep an operator console's stream (`/v1/ops/ws`) open and read all it sends.
    #[arg(long)]
    pub console: bool,
    /// The server's process id, to report its CPU use over the window (same machine).
    #[arg(long)]
    pub server_pid: Option<u32>,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Print one JSON line with the figures at the end.
    #[arg(long)]
    pub json: bool,
}

impl PeakConfig {
    /// A config with the documented defaults for `server`.
    pub fn new(server: impl Into<String>, operator_token: impl Into<String>) -> PeakConfig {
        PeakConfig {
            server: server.into(),
            operator_token: operator_token.into(),
            ..documented_defaults()
        }
    }
}

/// Request → first offer, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    #[serde(flatten)]
    pub percentiles: Percentiles,
    pub max: Option<f64>,
}

/// What a run measured. Every failure is in `errors`, by kind.
#[derive(Debug, Serialize)]
pub struct PeakReport {
    pub drivers: usize,
    pub connected: u64,
    pub ping_interval_ms: u64,
    pub window_s: f64,
    /// The server's `hail_location_pings_total` growth over the window, per second (`None`
    /// if the server could not be read at its end: see `errors`).
    pub accepted_pings_per_s: Option<f64>,
    pub requests_sent: u64,
    /// Requests the server answered 201.
    pub trips_requested: u64,
    /// Of those, trips whose first offer arrived before the run ended.
    pub trips_offered: u64,
    pub offer_latency_ms: Latency,
    pub offers_received: u64,
    pub offers_accepted: u64,
    pub trips_completed: u64,
    /// Requests sent more than 10 ms after they were due: the generator falling behind.
    pub requests_late: u64,
    /// Every error by kind: HTTP answers by path and status, transport failures,
    /// connect failures, dropped sockets, error frames, trips never offered.
    pub errors: BTreeMap<String, u64>,
    pub errors_total: u64,
    pub console: Option<ConsoleReport>,
    /// CPU time over the window ÷ its length (1.0 = one core busy).
    pub server_cores: Option<f64>,
    pub generator_cores: Option<f64>,
    /// Share of the machine's CPU time over the window that its hypervisor gave to other
    /// guests (`steal` in `/proc/stat`): a run under much of it measures the neighbours.
    pub cpu_stolen: Option<f64>,
}

pub async fn run(config: PeakConfig) -> anyhow::Result<PeakReport> {
    anyhow::ensure!(
        config.requests_per_s > 0.0 && config.requests_per_s <= 10_000.0,
        "--requests-per-s must be above 0 and at most 10000"
    );
    anyhow::ensure!(config.drivers > 0, "--drivers must be at least 1");
    anyhow::ensure!(
        !config.duration.is_zero(),
        "--duration must be longer than 0"
    );
    let requests = (config.requests_per_s * config.duration.as_secs_f64()).ceil() as usize;
    anyhow::ensure!(
        requests <= MAX_REQUESTS,
        "--requests-per-s × --duration asks for {requests} trips; at most {MAX_REQUESTS} a run \
         (one passenger account each)"
    );
    let target = Target::resolve(&config.server).await?;
    let metrics_url = config
        .metrics_url
        .clone()
        .unwrap_or_else(|| format!("{}/metrics", target.base));
    // Before anything is onboarded: a wrong address fails now, not after the warm-up.
    accepted_pings(&metrics_url)
        .await
        .map_err(|error| anyhow::anyhow!("{metrics_url}: {error}"))?;
    raise_open_file_limit(config.drivers + trips::IN_FLIGHT)?;
    if let Some(pid) = config.server_pid {
        cpu_seconds(pid).map_err(|error| anyhow::anyhow!("--server-pid {pid}: {error}"))?;
    }
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;

    eprintln!("onboarding {} drivers…", config.drivers);
    let driver_tokens = onboard_all(&http, &target.base, &config.operator_token, config.drivers)
        .await
        .map_err(|error| anyhow::anyhow!("onboarding drivers: {error}"))?;
    eprintln!("signing up {requests} passengers…");
    let errors = Arc::new(Errors::default());
    let trips = Arc::new(Trips::new(
        http.clone(),
        target.base.clone(),
        driver_tokens.clone(),
        trips::Steps {
            think: Duration::from_millis(config.think_time_ms),
            ride_step: Duration::from_millis(config.ride_step_ms),
        },
        errors.clone(),
    ));
    let passengers = trips.sign_up(requests).await?;

    eprintln!("connecting {} sockets…", driver_tokens.len());
    let (offers_in, offers_out) = mpsc::channel(OFFER_QUEUE);
    let pinging = Pinging {
        rate: 1_000.0 / config.ping_interval_ms as f64,
        burst: 1,
        seed: config.seed,
    };
    let fleet = Fleet::open(
        target.address,
        &target.host_port,
        &driver_tokens,
        &pinging,
        Some(offers_in),
    )
    .await;
    let counters = fleet.counters.clone();
    let answering = tokio::spawn(trips.clone().answer_offers(offers_out));
    let console = config.console.then(|| {
        Console::open(
            format!(
                "ws://{}/v1/ops/ws?token={}",
                target.host_port, config.operator_token
            ),
            errors.clone(),
        )
    });
    eprintln!(
        "{} connected ({} failed); {} s warm-up, then {} requests/s for {} s",
        get(&counters.connected),
        get(&counters.connect_failures),
        config.warmup.as_secs_f64(),
        config.requests_per_s,
        config.duration.as_secs_f64()
    );
    tokio::time::sleep(config.warmup).await;

    let server_cpu0 = config.server_pid.map(cpu_seconds).transpose()?;
    let own_cpu0 = cpu_seconds(std::process::id()).ok();
    let machine0 = machine_ticks().ok();
    let (t0, pings0) = (Instant::now(), accepted_pings(&metrics_url).await?);
    trips
        .request_all(passengers, config.requests_per_s, config.seed)
        .await;
    // The server may have died in the window: what was counted is still reported.
    let (t1, pings1) = (Instant::now(), accepted_pings(&metrics_url).await);
    if pings1.is_err() {
        errors.note("metrics: unreadable at the end of the window");
    }
    let server_cpu1 = config.server_pid.and_then(|pid| cpu_seconds(pid).ok());
    if config.server_pid.is_some() && server_cpu1.is_none() {
        errors.note("server: its CPU time unreadable at the end of the window (gone?)");
    }
    let own_cpu1 = cpu_seconds(std::process::id()).ok();
    let machine1 = machine_ticks().ok();
    let window = (t1 - t0).as_secs_f64();

    trips.wait_for_offers(Instant::now() + config.drain).await;
    let console = match console {
        Some(console) => Some(console.close().await),
        None => None,
    };
    fleet.stop().await;
    answering.abort();
    let _ = answering.await;
    errors.note_many("POST /v1/trips: no answer by the end", trips.unanswered());
    trips.stop_rides().await;

    let connect_failures = get(&counters.connect_failures);
    let socket_errors = [
        ("driver socket: connect failed", connect_failures),
        ("driver socket: dropped", get(&counters.dropped)),
        (
            "driver socket: rate_limited frame",
            get(&counters.rate_limited),
        ),
        ("driver socket: error frame", get(&counters.error_replies)),
    ];
    for (kind, count) in socket_errors {
        errors.note_many(kind, count);
    }
    let outcome = trips.outcome();
    errors.note_many("trip: no offer by the end", outcome.unoffered);
    let errors = errors.take();
    Ok(PeakReport {
        drivers: config.drivers,
        connected: get(&counters.connected),
        ping_interval_ms: config.ping_interval_ms,
        window_s: window,
        accepted_pings_per_s: pings1.ok().map(|pings1| (pings1 - pings0) / window),
        requests_sent: outcome.sent,
        trips_requested: outcome.requested,
        trips_offered: outcome.latencies_ms.len() as u64,
        offer_latency_ms: Latency {
            percentiles: Percentiles::of(&outcome.latencies_ms),
            max: outcome.latencies_ms.last().copied(),
        },
        offers_received: get(&counters.offers),
        offers_accepted: outcome.accepted,
        trips_completed: outcome.completed,
        requests_late: outcome.late,
        errors_total: errors.values().sum(),
        errors,
        console,
        server_cores: server_cpu0.zip(server_cpu1).map(|(a, b)| (b - a) / window),
        generator_cores: own_cpu0.zip(own_cpu1).map(|(a, b)| (b - a) / window),
        cpu_stolen: machine0
            .zip(machine1)
            .and_then(|((stolen0, all0), (stolen1, all1))| {
                (all1 > all0).then(|| (stolen1 - stolen0) / (all1 - all0))
            }),
    })
}

/// The machine's CPU time so far as (stolen, all) ticks, from `/proc/stat`'s `cpu` line:
/// user, nice, system, idle, iowait, irq, softirq, steal (guest time is inside user).
fn machine_ticks() -> anyhow::Result<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let ticks = stat
        .lines()
        .next()
        .and_then(|line| line.strip_prefix("cpu "))
        .ok_or_else(|| anyhow::anyhow!("no cpu line in /proc/stat"))?
        .split_whitespace()
        .take(8)
        .map(str::parse::<f64>)
        .collect::<Result<Vec<_>, _>>()?;
    anyhow::ensure!(ticks.len() == 8, "short cpu line in /proc/stat");
    Ok((ticks[7], ticks.iter().sum()))
}

/// User + system CPU seconds a process has used, from `/proc/<pid>/stat`.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces; fields are counted after its `)`.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| -> anyhow::Result<f64> {
        Ok(fields
            .get(i)
            .ok_or_else(|| anyhow::anyhow!("short /proc/{pid}/stat"))?
            .parse::<f64>()?)
    };
    // utime and stime are fields 14 and 15, the 12th and 13th after the name, in clock
    // ticks of USER_HZ: 100 a second in Linux's user ABI whatever the kernel's own HZ.
    const TICKS_PER_SECOND: f64 = 100.0;
    Ok((ticks(11)? + ticks(12)?) / TICKS_PER_SECOND)
}

impl PeakReport {
    pub fn table(&self) -> String {
        let ms = |value: Option<f64>| value.map_or("-".to_string(), |v| format!("{v:.1} ms"));
        let cores = |value: Option<f64>| value.map_or("-".to_string(), |v| format!("{v:.2}"));
        let latency = &self.offer_latency_ms;
        let mut text = format!(
            "drivers connected        {} of {}, pinging every {} ms\n\
             window                   {:.1} s\n\
             accepted (server count)  {} pings/s\n\
             requests                 {} sent, {} answered 201, {} late (> 10 ms)\n\
             offered                  {} trips ({} offers read, {} accepted, {} rides completed)\n\
             request → offer          p50 {} · p90 {} · p99 {} · max {}\n\
             server CPU               {} cores (generator {}; {} of the machine's stolen)\n\
             errors                   {}\n",
            self.connected,
            self.drivers,
            self.ping_interval_ms,
            self.window_s,
            self.accepted_pings_per_s
                .map_or("-".to_string(), |pings| format!("{pings:.0}")),
            self.requests_sent,
            self.trips_requested,
            self.requests_late,
            self.trips_offered,
            self.offers_received,
            self.offers_accepted,
            self.trips_completed,
            ms(latency.percentiles.p50),
            ms(latency.percentiles.p90),
            ms(latency.percentiles.p99),
            ms(latency.max),
            cores(self.server_cores),
            cores(self.generator_cores),
            self.cpu_stolen
                .map_or("-".to_string(), |share| format!("{:.1} %", share * 100.0)),
            self.errors_total,
        );
        for (kind, count) in self.errors.iter().filter(|(_, count)| **count > 0) {
            text += &format!("  {count:>8}  {kind}\n");
        }
        if let Some(console) = &self.console {
            text += &format!(
                "console                  {} messages, {:.1} MB read, by type {:?}\n",
                console.messages,
                console.bytes as f64 / 1e6,
                console.by_type
            );
        }
        text
    }
}
