//! Wiring: builds the parts around an open store, starts the background tasks and serves
//! HTTP until shutdown. [`start`] is what `hail serve`, `hail demo` and the tests call.
//!
//! The tasks of a node: the dispatch loop (leading or standing by), the lease keeper, the
//! fleet sweeper, and — in a cluster — the bus receiver and the fleet publisher.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use tokio::{net::TcpListener, sync::watch, task::JoinHandle, time::Instant};

use crate::{
    auth::Authenticator,
    bus::{Bus, FLEET_BATCH},
    cluster::{self, LeaseKeeper, Node},
    config::ServerConfig,
    dispatch::DispatchLoop,
    fleet::Fleet,
    gateway::{self, App, AppState, limits::RateLimits, listener, socket::Budgets},
    hub::Hub,
    ids::new_token,
    metrics::Metrics,
    rides::Rides,
    shutdown::{self, Shutdown, Trigger},
    store::Store,
    trip::Timestamp,
};

/// How often drivers past their grace period are swept and silent nodes forgotten.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// A running server.
pub struct Server {
    pub addr: SocketAddr,
    pub operator_token: String,
    /// Whether the operator token was generated (and should be shown to the operator).
    pub operator_token_generated: bool,
    pub app: AppState,
    trigger: Trigger,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Server {
    /// Stops accepting, closes sockets, lets in-flight requests finish, hands the dispatch
    /// lease over, closes the store.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.trigger.fire();
        self.task.await.context("server task panicked")?
    }
}

/// Builds a node's parts around an open store and its bus. Nothing runs yet: [`start`]
/// spawns the loop and the tasks; tests that drive time by hand drive the loop themselves.
pub fn assemble(
    config: &ServerConfig,
    store: Store,
    bus: Bus,
    metrics: Arc<Metrics>,
) -> (Arc<Rides>, DispatchLoop) {
    let fleet = Arc::new(Fleet::new(
        Duration::from_millis(config.dispatch.stale_after_ms),
        config.limits.max_speed_mps,
        bus.is_clustered(),
    ));
    let hub = Arc::new(Hub::new(
        Duration::from_millis(config.dispatch.driver_location_interval_ms),
        metrics.driver_messages_dropped.clone(),
    ));
    let (dispatcher, inbox) = DispatchLoop::channel();
    let rides = Arc::new(Rides::new(
        store.clone(),
        fleet.clone(),
        dispatcher,
        hub,
        bus,
        metrics.clone(),
        config,
    ));
    let dispatch = DispatchLoop::new(
        &config.dispatch,
        inbox,
        store,
        fleet,
        rides.clone(),
        metrics,
    );
    (rides, dispatch)
}

pub async fn start(config: ServerConfig) -> anyhow::Result<Server> {
    config.validate().map_err(anyhow::Error::msg)?;
    let store = Store::connect(
        &config.database_url,
        config.db_max_connections,
        Duration::from_millis(config.db_acquire_timeout_ms),
    )
    .await
    .with_context(|| format!("opening the store at {}", redact(&config.database_url)))?;
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let addr = listener.local_addr()?;
    let node = Node::new(&config.cluster, addr);
    let (operator_token, operator_token_generated) = match &config.operator_token {
        Some(token) => (token.clone(), false),
        None => (new_token(), true),
    };
    let (trigger, shutdown) = shutdown::channel();
    let metrics = Arc::new(Metrics::new());
    let (bus, bus_inbox) = match &config.cluster.bus_url {
        Some(urls) => {
            let (bus, inbox) = Bus::connect(
                urls,
                &node.id,
                node.started_at,
                metrics.clone(),
                shutdown.clone(),
            )
            .await?;
            (bus, Some(inbox))
        }
        None => (Bus::none(&node.id, metrics.clone()), None),
    };
    let single = bus_inbox.is_none();
    let (rides, dispatch) = assemble(&config, store.clone(), bus, metrics.clone());
    // The operators' figures continue where the store says, not from zero.
    if let Err(error) = rides.tally.restore(&store, Timestamp::now()).await {
        tracing::warn!(%error, "could not read the recent figures back; they start from zero");
    }

    let (leadership, following) = watch::channel(None);
    let mut tasks = vec![
        tokio::spawn(dispatch.run(following, shutdown.clone())),
        tokio::spawn(cluster::keep_lease(
            LeaseKeeper {
                store: store.clone(),
                node: node.clone(),
                config: config.cluster.clone(),
                single,
                fleet: rides.fleet.clone(),
                metrics: metrics.clone(),
            },
            leadership,
            shutdown.clone(),
        )),
        tokio::spawn(sweep(rides.clone(), shutdown.clone())),
        // Several store addresses: follow the primary (a no-op for one address).
        tokio::spawn(store.clone().follow_primary(shutdown.clone())),
    ];
    if let Some(inbox) = bus_inbox {
        tasks.push(tokio::spawn(receive(rides.clone(), inbox)));
        tasks.push(tokio::spawn(publish_fleet(rides.clone(), shutdown.clone())));
    }

    tracing::info!(%addr, node = %node.id, store = store.backend(),
        bus = config.cluster.bus_url.is_some(), "hail serving");
    let limits = config.limits.clone();
    // `/metrics` on its own address when asked (not public), else beside the API.
    let metrics_listener = match limits.metrics_listen {
        Some(address) => Some(
            TcpListener::bind(address)
                .await
                .with_context(|| format!("binding {address} for /metrics"))?,
        ),
        None => None,
    };
    let app = Arc::new(App {
        auth: Authenticator::new(store.clone(), &operator_token),
        budgets: Arc::new(Budgets::new(&limits)),
        limits: RateLimits::new(&limits),
        config,
        node,
        rides,
        shutdown: shutdown.clone(),
    });
    let router = gateway::router(app.clone(), metrics_listener.is_none());
    let header_read_timeout = Duration::from_millis(limits.header_read_timeout_ms);
    let max_connections = usize::try_from(limits.max_connections).unwrap_or(usize::MAX);
    if let Some(metrics_listener) = metrics_listener {
        tasks.push(tokio::spawn(listener::serve(
            metrics_listener,
            gateway::metrics_router(app.clone()),
            64,
            header_read_timeout,
            shutdown.clone(),
        )));
    }
    tasks.push(tokio::spawn(forget_quiet_clients(
        app.clone(),
        shutdown.clone(),
    )));
    let task = tokio::spawn(async move {
        listener::serve(
            listener,
            router,
            max_connections,
            header_read_timeout,
            shutdown,
        )
        .await;
        for task in tasks {
            let _ = task.await;
        }
        store.close().await;
        tracing::info!("hail stopped");
        Ok(())
    });
    Ok(Server {
        addr,
        operator_token,
        operator_token_generated,
        app,
        trigger,
        task,
    })
}

/// Drivers whose socket dropped and who stayed silent past the grace period go offline;
/// nodes silent on the bus lose their drivers' sockets.
async fn sweep(rides: Arc<Rides>, mut shutdown: Shutdown) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait() => return,
        }
        let now = Instant::now();
        rides.sweep_offline_drivers(now);
        rides.forget_silent_nodes(now);
    }
}

/// Rate limits keep a state per client; clients quiet for a while are forgotten.
async fn forget_quiet_clients(app: AppState, mut shutdown: Shutdown) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = tick.tick() => app.limits.forget_quiet_clients(),
            _ = shutdown.wait() => return,
        }
    }
}

/// Applies what the other nodes publish. Ends when the bus does (at shutdown).
async fn receive(rides: Arc<Rides>, mut inbox: tokio::sync::mpsc::Receiver<crate::bus::Envelope>) {
    while let Some(envelope) = inbox.recv().await {
        rides.receive(envelope, Instant::now());
    }
}

/// Publishes the drivers this node holds that changed, every batch (also when none did:
/// it is this node's heartbeat on the bus).
async fn publish_fleet(rides: Arc<Rides>, mut shutdown: Shutdown) {
    let mut tick = tokio::time::interval(FLEET_BATCH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => rides.publish_fleet(Instant::now()),
            _ = shutdown.wait() => return,
        }
    }
}

/// The URL without its password, for logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme + 3],
                    &credentials[..colon],
                    &url[at..]
                ),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn redacts_passwords() {
        assert_eq!(
            super::redact("postgres://u:secret@h/db"),
            "postgres://u:***@h/db"
        );
        assert_eq!(super::redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(super::redact("sqlite://hail.db"), "sqlite://hail.db");
    }
}
