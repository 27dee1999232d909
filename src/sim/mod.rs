//! `hail sim`: a living city of drivers and passengers that are real clients of the public
//! contract (DESIGN §3) over HTTP and WebSocket, so it drives any hail server — or any
//! node of a cluster — local or remote. It is the demo's city and the load generator
//! behind every end-to-end figure.
//!
//! - [`city`]: what every client shares — the servers, HTTP and socket helpers, demand;
//! - [`driver`]: one driver — cruising, pinging, answering offers, driving rides;
//! - [`passenger`]: one passenger — requesting, following, maybe cancelling;
//! - [`report`]: counters, the live progress line and the summary;
//! - [`load`]: `hail load`, peak ingest: many sockets pinging within their budget;
//! - [`peak`]: `hail peak`, the evening peak at the process limit: `hail load`'s sockets
//!   answering offers, passengers requesting at a fixed rate, maybe a console watching.
//!
//! Every random choice is drawn from generators seeded by `--seed`.

mod city;
mod driver;
pub mod load;
mod passenger;
pub mod peak;
pub mod report;

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use clap::Args;
use rand::{RngExt, SeedableRng, rngs::StdRng};
use tokio::{sync::Semaphore, task::JoinSet, time::Instant};

pub use report::Summary;

use crate::shutdown::{self, Shutdown};
use city::City;
use report::Counters;

/// The longest the simulator waits for its fleet to come online before requests start.
const RAMP_UP_LIMIT: Duration = Duration::from_secs(300);

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
    /// The hail server(s) to drive: one address, or the nodes of a cluster comma-separated
    /// (each client starts on a random one and moves to another when it fails).
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
    /// 20,000 drivers). Only for servers on a loopback address. Each address has about
    /// 28,000 ephemeral ports, shared by every process on the machine using it.
    #[arg(long, default_value_t = 0)]
    pub source_addresses: u32,
    /// Print one final JSON line with the summary.
    #[arg(long)]
    pub json: bool,
    /// Also write when each request was sent and each offer arrived to this file
    /// (`trip id,request|offer,Unix ms` lines), so that the runs of several simulators
    /// on one cluster can be joined: a trip's first offer may reach another one's driver.
    #[arg(long)]
    pub timings: Option<std::path::PathBuf>,
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
    /// When the client heard the answer.
    pub at: Instant,
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
    /// Offers received on driver sockets, with when: a failover is over when offers come
    /// again.
    pub offers: Mutex<Vec<(Instant, String)>>,
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
        SimConfig {
            server: server.into(),
            operator_token: operator_token.into(),
            ..documented_defaults()
        }
    }
}

/// A command's arguments as clap parses a command line that gives only the operator
/// token (the environment ignored): the defaults the help documents.
fn documented_defaults<C: clap::Args>() -> C {
    #[derive(clap::Parser)]
    struct Wrapper<C: clap::Args> {
        #[command(flatten)]
        config: C,
    }
    let command =
        <Wrapper<C> as clap::CommandFactory>::command().mut_args(|arg| arg.env(None::<&str>));
    let matches = command.get_matches_from(["hail", "--operator-token", "placeholder"]);
    <Wrapper<C> as clap::FromArgMatches>::from_arg_matches(&matches)
        .expect("the defaults parse")
        .config
}

/// Runs the city until `--duration` plus the drain, or until `stop` fires.
pub async fn run(config: SimConfig, stop: Shutdown) -> anyhow::Result<Summary> {
    let city = Arc::new(City::new(config).await?);
    let (stop_clients, clients_stop) = shutdown::channel();

    // Drivers: onboarded through the operator API, a bounded number at a time.
    let mut drivers = JoinSet::new();
    let onboarding = Arc::new(Semaphore::new(64));
    for index in 0..city.config.drivers as usize {
        let (city, onboarding, stop) = (city.clone(), onboarding.clone(), clients_stop.clone());
        drivers.spawn(async move {
            let mut rng = StdRng::seed_from_u64(
                city.config
                    .seed
                    .wrapping_mul(1_000_003)
                    .wrapping_add(index as u64),
            );
            let token = {
                let _permit = onboarding.acquire().await;
                driver::onboard(&city, index, &mut rng).await
            };
            if let Some(token) = token {
                driver::drive(city, token, index, rng, stop).await;
            }
        });
    }

    let progress = (!city.config.quiet)
        .then(|| tokio::spawn(report::progress(city.clone(), clients_stop.clone())));

    // The fleet comes online first, so the figures describe a running city rather than
    // a ramp-up (bounded: a fleet that cannot all connect is reported, not waited for).
    let ramp_end = Instant::now() + RAMP_UP_LIMIT;
    let mut stop_watch = stop.clone();
    loop {
        let c = &city.counters;
        let settled = Counters::get(&c.connected) + Counters::get(&c.onboarding_failures);
        if settled >= u64::from(city.config.drivers)
            || Instant::now() >= ramp_end
            || stop.has_begun()
        {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            _ = stop_watch.wait() => {}
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
            _ = stop_watch.wait() => break,
        }
        let (city, stop) = (city.clone(), clients_stop.clone());
        let seed = city
            .config
            .seed
            .wrapping_mul(7_919)
            .wrapping_add(passenger_index);
        passenger_index += 1;
        passengers
            .spawn(async move { passenger::ride(city, StdRng::seed_from_u64(seed), stop).await });
    }
    if !stop.has_begun() {
        tokio::select! {
            _ = tokio::time::sleep_until(requests_end) => {}
            _ = stop_watch.wait() => {}
        }
    }
    // Drain: rides under way may finish.
    let drain_end = Instant::now() + city.config.drain;
    tokio::select! {
        _ = async { while passengers.join_next().await.is_some() {} } => {}
        _ = tokio::time::sleep_until(drain_end) => {}
        _ = stop_watch.wait() => {}
    }
    stop_clients.fire();
    while passengers.join_next().await.is_some() {}
    while drivers.join_next().await.is_some() {}
    if let Some(progress) = progress {
        let _ = progress.await;
    }
    if let Some(path) = &city.config.timings {
        city.counters.write_timings(path)?;
    }
    Ok(report::summarize(&city, started.elapsed(), pings_before))
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
}
