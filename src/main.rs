//! The `hail` binary: a thin command line over the library.

use std::io::IsTerminal;

use clap::{Args, Parser, Subcommand};
use hail::{auth::check_operator_name, config::ServerConfig, server, shutdown, sim, store::Store};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(name = "hail", version, about = "Ride-hailing dispatch service")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the REST + WebSocket API and the operator console.
    Serve(ServerConfig),
    /// Drive a hail server with a simulated city of drivers and passengers.
    Sim(sim::SimConfig),
    /// Peak ingest: many driver sockets pinging within their budget; prints the pings a
    /// second the server accepted (its own count) over a fixed window.
    Load(sim::load::LoadConfig),
    /// The evening peak at the process limit: driver sockets pinging (as `load`) and
    /// answering offers, passengers requesting at a fixed rate, optionally an operator
    /// console open; prints request → offer latency and every error by kind.
    Peak(sim::peak::PeakConfig),
    /// A server on the embedded store plus a simulated Seoul, in one process.
    Demo(DemoConfig),
    /// Operators are people: each has a token of their own, and the trip events they
    /// cause carry their name.
    Operator(OperatorCommand),
}

#[derive(Args)]
struct OperatorCommand {
    /// The store `hail serve` uses.
    #[arg(long, env = "HAIL_DATABASE_URL", default_value = "sqlite://hail.db")]
    database_url: String,
    #[command(subcommand)]
    action: OperatorAction,
}

#[derive(Subcommand)]
enum OperatorAction {
    /// Adds an operator and prints their token (once: it is stored hashed).
    Add {
        /// 1 to 64 letters, digits, '.', '_', '-' or '@'.
        name: String,
    },
    /// Takes an operator's token away: their requests and console stop working at once.
    Revoke { name: String },
    /// Every operator, revoked ones too.
    List,
}

#[derive(Args)]
#[command(mut_arg("database_url", |arg| arg.default_value("sqlite://hail-demo.db")))]
struct DemoConfig {
    #[command(flatten)]
    server: ServerConfig,
    /// Simulated drivers.
    #[arg(long, default_value_t = 300)]
    drivers: u32,
    /// New ride requests per minute.
    #[arg(long, default_value_t = 40.0)]
    requests_per_min: f64,
    /// How much faster than real time the city drives, so rides finish within a minute.
    #[arg(long, default_value_t = 8.0)]
    time_scale: f64,
    /// How often each simulated driver pings.
    #[arg(long, default_value_t = 2_000)]
    ping_interval_ms: u64,
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal, never in files and CI logs.
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            EnvFilter::try_from_env("HAIL_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    match Cli::parse().command {
        Command::Serve(config) => serve(config).await,
        Command::Sim(config) => run_sim(config).await,
        Command::Load(config) => {
            let json = config.json;
            let report = sim::load::run(config).await?;
            print!("{}", report.table());
            if json {
                println!("{}", serde_json::to_string(&report)?);
            }
            Ok(())
        }
        Command::Peak(config) => {
            let json = config.json;
            let report = sim::peak::run(config).await?;
            print!("{}", report.table());
            if json {
                println!("{}", serde_json::to_string(&report)?);
            }
            Ok(())
        }
        Command::Demo(config) => demo(config).await,
        Command::Operator(command) => operator(command).await,
    }
}

async fn operator(command: OperatorCommand) -> anyhow::Result<()> {
    let store = Store::connect(&command.database_url, 1, std::time::Duration::from_secs(5)).await?;
    match command.action {
        OperatorAction::Add { name } => {
            check_operator_name(&name).map_err(anyhow::Error::msg)?;
            let Some(token) = store.add_operator(&name).await? else {
                anyhow::bail!(
                    "operator {name:?} exists already; revoke them first for a new token"
                );
            };
            // The token alone on stdout (for scripts); the note on stderr.
            println!("{token}");
            eprintln!("operator {name} added; the token above is shown only this once");
        }
        OperatorAction::Revoke { name } => {
            if !store.revoke_operator(&name).await? {
                anyhow::bail!("no operator {name:?} holds a token");
            }
            eprintln!(
                "operator {name} revoked: requests with their token fail from now on, and their open console closes within seconds"
            );
        }
        OperatorAction::List => {
            for operator in store.operators().await? {
                let state = match operator.revoked_at {
                    Some(at) => format!("revoked {}", at.to_rfc3339()),
                    None => "active".to_string(),
                };
                println!(
                    "{}\tadded {}\t{state}",
                    operator.name,
                    operator.created_at.to_rfc3339()
                );
            }
        }
    }
    store.close().await;
    Ok(())
}

async fn serve(config: ServerConfig) -> anyhow::Result<()> {
    raise_open_file_limit();
    let server = server::start(config).await?;
    if server.operator_token_generated {
        // Printed once, on stdout, so an operator can copy it; never logged.
        println!(
            "operator token (generated; set HAIL_OPERATOR_TOKEN to choose one): {}",
            server.operator_token
        );
    }
    println!("hail listening on http://{}", server.addr);
    shutdown_signal().await;
    tracing::info!("shutting down");
    server.shutdown().await
}

async fn run_sim(config: sim::SimConfig) -> anyhow::Result<()> {
    let json = config.json;
    let (stop, stopped) = shutdown::channel();
    tokio::spawn(async move {
        shutdown_signal().await;
        stop.fire();
    });
    let summary = sim::run(config, stopped).await?;
    print!("{}", summary.table());
    if json {
        println!("{}", serde_json::to_string(&summary)?);
    }
    Ok(())
}

async fn demo(config: DemoConfig) -> anyhow::Result<()> {
    raise_open_file_limit();
    let server = server::start(config.server).await?;
    let console = format!("http://{}/", server.addr);
    println!(
        "hail demo: a simulated Seoul with {} drivers, {} requests a minute",
        config.drivers, config.requests_per_min
    );
    // An earlier demo's city is gone with its process: its passengers and drivers will
    // never finish the trips it left open. End them, on the record, rather than leave
    // them to dispatch and to the operators' alerts; the history and figures stay.
    let demo_operator = hail::auth::Principal {
        id: hail::auth::BOOTSTRAP_OPERATOR.to_string(),
        role: hail::trip::Role::Operator,
    };
    let ended = server
        .app
        .rides
        .void_open_trips(
            &demo_operator,
            "the demo restarted: its simulated city was gone",
        )
        .await?;
    if ended > 0 {
        println!(
            "  resumed the store of an earlier demo: cancelled the {ended} trips it left open"
        );
    }
    println!("  console:        {console}");
    println!("  operator token: {}", server.operator_token);
    println!("  stop with Ctrl-C");
    let mut city = sim::SimConfig::new(
        format!("http://{}", server.addr),
        server.operator_token.clone(),
    );
    city.drivers = config.drivers;
    city.requests_per_min = config.requests_per_min;
    city.time_scale = config.time_scale;
    city.ping_interval_ms = config.ping_interval_ms;
    city.seed = config.seed;
    city.think_time_ms = 1_500;
    city.duration = std::time::Duration::from_secs(100 * 365 * 24 * 3_600);
    city.drain = std::time::Duration::ZERO;
    let (stop, stopped) = shutdown::channel();
    let simulation = tokio::spawn(sim::run(city, stopped));
    shutdown_signal().await;
    stop.fire();
    let summary = simulation.await??;
    print!("{}", summary.table());
    server.shutdown().await
}

/// Every driver is a socket: ask for as many descriptors as the system allows.
fn raise_open_file_limit() {
    if let Err(error) = rlimit::increase_nofile_limit(u64::MAX) {
        tracing::warn!(%error, "could not raise the open-file limit");
    }
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
}
