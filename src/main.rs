//! The `hail` binary: a thin command line over the library.

use clap::{Parser, Subcommand};
use hail::{config::ServerConfig, server};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(name = "hail", version, about = "Ride-hailing dispatch service")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the REST + WebSocket API.
    Serve(ServerConfig),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            EnvFilter::try_from_env("HAIL_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    match Cli::parse().command {
        Command::Serve(config) => serve(config).await,
    }
}

async fn serve(config: ServerConfig) -> anyhow::Result<()> {
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
