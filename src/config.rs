//! Configuration: every flag of `hail serve` is also an environment variable, and every
//! dispatch number carries its unit in its name (DESIGN §3 "Running it", §4).

use std::net::SocketAddr;

use clap::Args;

use crate::trip::Tariff;

/// `hail serve`.
#[derive(Debug, Clone, Args)]
pub struct ServerConfig {
    /// Address to listen on.
    #[arg(long, env = "HAIL_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Store: `sqlite://path.db` (created and migrated if missing) or `postgres://…`.
    #[arg(long, env = "HAIL_DATABASE_URL", default_value = "sqlite://hail.db")]
    pub database_url: String,

    /// Operator bearer token. If unset, one is generated and printed once at start.
    #[arg(long, env = "HAIL_OPERATOR_TOKEN", hide_env_values = true)]
    pub operator_token: Option<String>,

    /// Largest number of store connections held open.
    #[arg(long, env = "HAIL_DB_MAX_CONNECTIONS", default_value_t = 8,
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub db_max_connections: u32,

    /// How long a request waits for a store connection before it answers 503.
    #[arg(long, env = "HAIL_DB_ACQUIRE_TIMEOUT_MS", default_value_t = 3_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub db_acquire_timeout_ms: u64,

    #[command(flatten)]
    pub limits: LimitsConfig,

    #[command(flatten)]
    pub cluster: ClusterConfig,

    #[command(flatten)]
    pub dispatch: DispatchConfig,

    #[command(flatten)]
    pub tariff: TariffConfig,
}

/// What one client may take (issue 10): connections, sockets per role and per account,
/// time to send a request, fares.
#[derive(Debug, Clone, Args)]
pub struct LimitsConfig {
    /// Plain HTTP connections served at once (a WebSocket leaves this count when it is
    /// upgraded and counts in its role's budget instead); more are closed at accept.
    #[arg(long, env = "HAIL_MAX_CONNECTIONS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections: u64,

    /// A client that has not sent a whole request header this long after connecting — or
    /// after its last response, on a kept-alive connection — is disconnected.
    #[arg(long, env = "HAIL_HEADER_READ_TIMEOUT_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub header_read_timeout_ms: u64,

    /// Driver sockets open at once; more are refused with 503.
    #[arg(long, env = "HAIL_MAX_DRIVER_SOCKETS", default_value_t = 300_000)]
    pub max_driver_sockets: usize,

    /// Trip streams open at once, all accounts together; more are refused with 503.
    #[arg(long, env = "HAIL_MAX_TRIP_STREAMS", default_value_t = 100_000)]
    pub max_trip_streams: usize,

    /// Operator streams open at once; more are refused with 503.
    #[arg(long, env = "HAIL_MAX_OPERATOR_STREAMS", default_value_t = 200)]
    pub max_operator_streams: usize,

    /// Trip streams one account may hold open; more are refused with 429.
    #[arg(long, env = "HAIL_MAX_STREAMS_PER_ACCOUNT", default_value_t = 4,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_streams_per_account: u64,

    /// Serve `/metrics` on this address only, not on the public listener.
    #[arg(long, env = "HAIL_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// A ping implying more than this speed since the last one is not driven distance
    /// (a jump, a spoofed position): the odometer leaves it out.
    #[arg(long, env = "HAIL_MAX_SPEED_MPS", default_value_t = 70.0)]
    pub max_speed_mps: f64,

    /// A final fare is at most this many times the estimate; a capped fare is flagged in
    /// its event and counted in `/metrics`.
    #[arg(long, env = "HAIL_FARE_CAP_FACTOR", default_value_t = 3.0)]
    pub fare_cap_factor: f64,

    /// Passenger sign-ups a minute from one client address (a burst of as many).
    #[arg(long, env = "HAIL_SIGNUP_LIMIT_PER_MIN", default_value_t = 30,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub signup_limit_per_min: u32,

    /// Trip requests and cancels a minute by one passenger (a burst of as many).
    #[arg(long, env = "HAIL_TRIP_REQUEST_LIMIT_PER_MIN", default_value_t = 6,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub trip_request_limit_per_min: u32,

    /// Every other write a minute by one passenger or driver (a burst of a quarter as
    /// many). Operators are not limited: they are people with tokens of their own.
    #[arg(long, env = "HAIL_WRITE_LIMIT_PER_MIN", default_value_t = 120,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub write_limit_per_min: u32,

    /// Frames one socket may send a second, sustained, and twice that in a burst: more
    /// are dropped (`rate_limited` on a driver socket), and a socket that keeps on is
    /// closed (1008). A ping every 4 s needs a quarter of one; lift it only to measure a
    /// node's ingest (`benches/ingest.sh`).
    #[arg(long, env = "HAIL_SOCKET_MESSAGES_PER_S", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub socket_messages_per_s: u32,

    /// Behind a reverse proxy: take the client's address from the last entry of
    /// `X-Forwarded-For` (the one the proxy added). Off by default: a client could write
    /// any address there.
    #[arg(long, env = "HAIL_TRUST_FORWARDED_FOR", default_value_t = false)]
    pub trust_forwarded_for: bool,
}

/// The cluster, DESIGN §1: several nodes on one PostgreSQL, joined by NATS.
#[derive(Debug, Clone, Args)]
pub struct ClusterConfig {
    /// NATS server(s) joining the nodes of a cluster, comma-separated `nats://host:port`.
    /// Unset: one node, no bus. Needs a PostgreSQL store.
    #[arg(long, env = "HAIL_BUS_URL")]
    pub bus_url: Option<String>,

    /// This node's name in the cluster (unique). Default: generated at start.
    #[arg(long, env = "HAIL_NODE_ID")]
    pub node_id: Option<String>,

    /// The base URL clients reach this node at, shown to operators. Default:
    /// `http://` + the listen address.
    #[arg(long, env = "HAIL_ADVERTISE_URL")]
    pub advertise_url: Option<String>,

    /// A dispatch lease not renewed for this long may be taken over by another node.
    #[arg(long, env = "HAIL_LEASE_TTL_MS", default_value_t = 3_000,
          value_parser = clap::value_parser!(u64).range(100..))]
    pub lease_ttl_ms: u64,

    /// How often the leader renews its lease (and every node reports itself).
    #[arg(long, env = "HAIL_LEASE_RENEW_MS", default_value_t = 1_000,
          value_parser = clap::value_parser!(u64).range(10..))]
    pub lease_renew_ms: u64,
}

/// How the dispatcher matches trips to drivers (`HAIL_MATCHING`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Matching {
    Greedy,
    Batch,
}

/// Dispatch policy, DESIGN §4.
#[derive(Debug, Clone, Args)]
pub struct DispatchConfig {
    /// How long a driver has to answer an offer.
    #[arg(long, env = "HAIL_OFFER_TIMEOUT_MS", default_value_t = 15_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub offer_timeout_ms: u64,

    /// A trip nobody accepted within this long after it was requested expires.
    #[arg(long, env = "HAIL_DISPATCH_DEADLINE_MS", default_value_t = 120_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub dispatch_deadline_ms: u64,

    /// Candidate search radii, widened in order while no candidate is found.
    #[arg(long, env = "HAIL_SEARCH_RADIUS_M", default_value = "3000,6000,10000",
          value_delimiter = ',', num_args = 1..)]
    pub search_radius_m: Vec<f64>,

    /// How many nearest candidates are ranked by ETA.
    #[arg(long, env = "HAIL_MAX_CANDIDATES", default_value_t = 8,
          value_parser = clap::value_parser!(u32).range(1..=256))]
    pub max_candidates: u32,

    /// A driver without a ping for this long is not dispatchable.
    #[arg(long, env = "HAIL_STALE_AFTER_MS", default_value_t = 30_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub stale_after_ms: u64,

    /// A driver whose socket dropped and who has not pinged for this long is offline.
    #[arg(long, env = "HAIL_OFFLINE_AFTER_MS", default_value_t = 60_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub offline_after_ms: u64,

    /// A trip's driver with no socket and no ping for this long is lost: before pickup
    /// the trip is dispatched again, after pickup it is flagged for operators.
    #[arg(long, env = "HAIL_DRIVER_LOST_AFTER_MS", default_value_t = 90_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub driver_lost_after_ms: u64,

    /// How often a trip without candidates is searched again.
    #[arg(long, env = "HAIL_DISPATCH_RETRY_MS", default_value_t = 1_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub dispatch_retry_ms: u64,

    /// How trips meet drivers: `greedy` offers each trip on its own to its best driver at
    /// once; `batch` collects the waiting trips over a window and assigns them together
    /// (least total pickup time).
    #[arg(long, env = "HAIL_MATCHING", value_enum, default_value_t = Matching::Greedy)]
    pub matching: Matching,

    /// `batch`: the window requests are collected over.
    #[arg(long, env = "HAIL_BATCH_WINDOW_MS", default_value_t = 1_000,
          value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub batch_window_ms: u64,

    /// `batch`: most trips weighed in one window (the oldest first; the rest wait for the
    /// next), which bounds a solve's size.
    #[arg(long, env = "HAIL_BATCH_MAX_TRIPS", default_value_t = 200,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub batch_max_trips: u32,

    /// Road distance over straight-line distance, for ETAs and fare estimates.
    #[arg(long, env = "HAIL_DETOUR_FACTOR", default_value_t = 1.3)]
    pub detour_factor: f64,

    /// Average urban driving speed in metres per second (7 m/s ≈ 25 km/h).
    #[arg(long, env = "HAIL_URBAN_SPEED_MPS", default_value_t = 7.0)]
    pub urban_speed_mps: f64,

    /// Least time between two `driver_location` messages on a trip stream.
    #[arg(
        long,
        env = "HAIL_DRIVER_LOCATION_INTERVAL_MS",
        default_value_t = 1_000
    )]
    pub driver_location_interval_ms: u64,
}

/// Fares, DESIGN §2. Defaults follow Seoul's 2024 day tariff (4,800 won base, 100 won per
/// 131 m, 100 won per 30 s).
#[derive(Debug, Clone, Args)]
pub struct TariffConfig {
    #[arg(long, env = "HAIL_FARE_BASE", default_value_t = 4_800)]
    pub fare_base: i64,
    #[arg(long, env = "HAIL_FARE_PER_KM", default_value_t = 763)]
    pub fare_per_km: i64,
    #[arg(long, env = "HAIL_FARE_PER_MINUTE", default_value_t = 200)]
    pub fare_per_minute: i64,
    #[arg(long, env = "HAIL_FARE_CURRENCY", default_value = "KRW")]
    pub fare_currency: String,
}

impl TariffConfig {
    pub fn tariff(&self) -> Tariff {
        Tariff {
            base: self.fare_base,
            per_km: self.fare_per_km,
            per_minute: self.fare_per_minute,
            currency: self.fare_currency.clone(),
        }
    }
}

impl ServerConfig {
    /// Defaults, as `hail serve` with no flags and no environment would have them.
    pub fn new(listen: SocketAddr, database_url: impl Into<String>) -> ServerConfig {
        #[derive(clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            config: ServerConfig,
        }
        // Parse from an empty command line but ignore the environment, so tests and the
        // simulator get the documented defaults whatever the caller's shell has set.
        let command = <Wrapper as clap::CommandFactory>::command();
        let command = command.mut_args(|arg| arg.env(None::<&str>));
        let matches = command.get_matches_from(["hail"]);
        let wrapper = <Wrapper as clap::FromArgMatches>::from_arg_matches(&matches)
            .expect("the defaults parse");
        let mut config = wrapper.config;
        config.listen = listen;
        config.database_url = database_url.into();
        config
    }

    /// Problems clap's per-flag checks cannot see.
    pub fn validate(&self) -> Result<(), String> {
        let d = &self.dispatch;
        if d.search_radius_m.is_empty()
            || d.search_radius_m
                .iter()
                .any(|r| !r.is_finite() || *r <= 0.0)
        {
            return Err("HAIL_SEARCH_RADIUS_M must be positive distances in metres".into());
        }
        if !(d.detour_factor.is_finite() && d.detour_factor >= 1.0) {
            return Err("HAIL_DETOUR_FACTOR must be at least 1".into());
        }
        if !(d.urban_speed_mps.is_finite() && d.urban_speed_mps > 0.0) {
            return Err("HAIL_URBAN_SPEED_MPS must be positive".into());
        }
        if d.offline_after_ms < d.stale_after_ms {
            return Err(
                "HAIL_OFFLINE_AFTER_MS must not be shorter than HAIL_STALE_AFTER_MS".into(),
            );
        }
        if let Some(token) = &self.operator_token
            && token.len() < 16
        {
            return Err("HAIL_OPERATOR_TOKEN must be at least 16 characters".into());
        }
        let limits = &self.limits;
        if !(limits.max_speed_mps.is_finite() && limits.max_speed_mps > 0.0) {
            return Err("HAIL_MAX_SPEED_MPS must be positive".into());
        }
        if !(limits.fare_cap_factor.is_finite() && limits.fare_cap_factor >= 1.0) {
            return Err("HAIL_FARE_CAP_FACTOR must be at least 1".into());
        }
        let cluster = &self.cluster;
        if cluster.bus_url.is_some() && self.database_url.starts_with("sqlite:") {
            return Err(
                "HAIL_BUS_URL joins nodes on one PostgreSQL store; an embedded SQLite store \
                 belongs to one node. Use HAIL_DATABASE_URL=postgres://… or unset HAIL_BUS_URL"
                    .into(),
            );
        }
        if cluster.lease_renew_ms * 2 > cluster.lease_ttl_ms {
            return Err(
                "HAIL_LEASE_RENEW_MS must be at most half of HAIL_LEASE_TTL_MS, so one late \
                 renewal does not cost the lease"
                    .into(),
            );
        }
        if let Some(id) = &cluster.node_id
            && (id.is_empty()
                || id.len() > 64
                || !id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)))
        {
            return Err("HAIL_NODE_ID must be 1 to 64 letters, digits, '-', '_' or '.'".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_design() {
        let config = ServerConfig::new("127.0.0.1:0".parse().unwrap(), "sqlite::memory:");
        assert_eq!(config.dispatch.offer_timeout_ms, 15_000);
        assert_eq!(config.dispatch.dispatch_deadline_ms, 120_000);
        assert_eq!(
            config.dispatch.search_radius_m,
            vec![3_000.0, 6_000.0, 10_000.0]
        );
        assert_eq!(config.dispatch.stale_after_ms, 30_000);
        assert_eq!(config.dispatch.offline_after_ms, 60_000);
        assert_eq!(config.dispatch.driver_lost_after_ms, 90_000);
        assert_eq!(config.tariff.fare_currency, "KRW");
        assert!(config.validate().is_ok());
    }

    #[test]
    fn validation_catches_nonsense() {
        let mut config = ServerConfig::new("127.0.0.1:0".parse().unwrap(), "sqlite::memory:");
        config.dispatch.search_radius_m = vec![3_000.0, -1.0];
        assert!(config.validate().is_err());
        let mut config = ServerConfig::new("127.0.0.1:0".parse().unwrap(), "sqlite::memory:");
        config.operator_token = Some("short".into());
        assert!(config.validate().is_err());
        let mut config = ServerConfig::new("127.0.0.1:0".parse().unwrap(), "sqlite://hail.db");
        config.cluster.bus_url = Some("nats://127.0.0.1:4222".into());
        let refused = config.validate().unwrap_err();
        assert!(refused.contains("PostgreSQL"), "{refused}");
        config.database_url = "postgres://db/hail".into();
        assert!(config.validate().is_ok());
        config.cluster.lease_renew_ms = 2_000;
        assert!(config.validate().is_err());
    }

    #[test]
    fn the_socket_frame_budget_is_ten_a_second_unless_lifted_and_never_zero() {
        #[derive(clap::Parser)]
        struct Serve {
            #[command(flatten)]
            limits: LimitsConfig,
        }
        let parse = |args: &[&str]| {
            let command =
                <Serve as clap::CommandFactory>::command().mut_args(|arg| arg.env(None::<&str>));
            command
                .try_get_matches_from(std::iter::once("serve").chain(args.iter().copied()))
                .and_then(|matches| <Serve as clap::FromArgMatches>::from_arg_matches(&matches))
                .map(|serve| serve.limits.socket_messages_per_s)
        };
        assert_eq!(parse(&[]).unwrap(), 10);
        assert_eq!(parse(&["--socket-messages-per-s", "100"]).unwrap(), 100);
        for bad in ["0", "-1", "ten", "1.5", ""] {
            let refused = parse(&[&format!("--socket-messages-per-s={bad}")]).unwrap_err();
            assert!(
                refused.to_string().contains("socket-messages-per-s"),
                "{bad}: {refused}"
            );
        }
    }
}
