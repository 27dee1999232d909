//! Wiring: builds the shared state, recovers open trips, starts the background tasks and
//! serves HTTP until shutdown. `start` is what `hail serve`, `hail demo` and the tests call.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context;
use tokio::{
    net::TcpListener,
    sync::{Semaphore, watch},
    task::JoinHandle,
    time::Instant,
};

use crate::{
    config::ServerConfig,
    dispatch::Dispatcher,
    fleet::FleetIndex,
    hub::{Hub, WithdrawReason},
    metrics::Metrics,
    store::{self, Role, Store},
    trip::Tariff,
};

/// Most cached token → account entries; the cache is cleared when it fills. Tokens never
/// change owner, so a cached answer cannot go wrong, only old.
const AUTH_CACHE_ENTRIES: usize = 100_000;

/// Everything a request handler or socket task needs. Cloned per request: an `Arc`.
pub type AppState = Arc<Shared>;

pub struct Shared {
    pub config: ServerConfig,
    pub store: Store,
    /// std `Mutex`: every critical section is a few map/tree operations and never awaits;
    /// the ping path holds it for well under a microsecond.
    pub fleet: Arc<Mutex<FleetIndex>>,
    pub dispatcher: Arc<Dispatcher>,
    pub hub: Arc<Hub>,
    pub metrics: Arc<Metrics>,
    pub tariff: Tariff,
    operator_token_hash: String,
    auth_cache: Mutex<HashMap<String, (String, Role)>>,
    /// Caps open WebSockets (`HAIL_MAX_SOCKETS`); a socket holds a permit while open.
    pub sockets: Arc<Semaphore>,
    /// Flips to `true` once at shutdown; socket tasks close when they see it.
    pub shutdown: watch::Receiver<bool>,
}

impl Shared {
    /// The account a bearer token belongs to.
    pub async fn authenticate(
        &self,
        token: &str,
    ) -> Result<Option<(String, Role)>, store::StoreError> {
        let hash = store::token_hash(token);
        if hash == self.operator_token_hash {
            return Ok(Some(("operator".to_string(), Role::Operator)));
        }
        if let Some(found) = self.auth_cache.lock().unwrap().get(&hash) {
            return Ok(Some(found.clone()));
        }
        let found = self.store.authenticate(token).await?;
        if let Some(found) = &found {
            let mut cache = self.auth_cache.lock().unwrap();
            if cache.len() >= AUTH_CACHE_ENTRIES {
                cache.clear();
            }
            cache.insert(hash, found.clone());
        }
        Ok(found)
    }
}

/// A running server.
pub struct Server {
    pub addr: SocketAddr,
    pub operator_token: String,
    /// Whether the operator token was generated (and should be shown to the operator).
    pub operator_token_generated: bool,
    pub state: AppState,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Server {
    /// Stops accepting, closes sockets, lets in-flight requests finish, closes the store.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.shutdown.send(true);
        self.task.await.context("server task panicked")?
    }
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

    let (operator_token, operator_token_generated) = match &config.operator_token {
        Some(token) => (token.clone(), false),
        None => (store::new_token(), true),
    };
    let (shutdown_sender, shutdown) = watch::channel(false);
    let state = assemble(&config, store, &operator_token, shutdown.clone());
    let dispatcher = state.dispatcher.clone();
    let recovered = dispatcher
        .recover(Instant::now())
        .await
        .context("recovering open trips")?;

    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, store = state.store.backend(), recovered_trips = recovered, "hail serving");

    let dispatch_task = tokio::spawn(dispatcher.run(shutdown.clone()));
    let sweeper_task = tokio::spawn(sweep_offline_drivers(state.clone(), shutdown.clone()));
    let app = crate::http::router(state.clone());
    let task_state = state.clone();
    let mut stop = shutdown.clone();
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { stopping(&mut stop).await })
            .await
            .context("serving HTTP")?;
        let _ = dispatch_task.await;
        let _ = sweeper_task.await;
        task_state.store.close().await;
        tracing::info!("hail stopped");
        Ok(())
    });
    Ok(Server {
        addr,
        operator_token,
        operator_token_generated,
        state,
        shutdown: shutdown_sender,
        task,
    })
}

/// Builds the shared state around an open store: fleet, hub, dispatcher, metrics.
/// Nothing runs yet — [`start`] recovers open trips and starts the tasks; tests that drive
/// time by hand call the parts themselves.
pub fn assemble(
    config: &ServerConfig,
    store: Store,
    operator_token: &str,
    shutdown: watch::Receiver<bool>,
) -> AppState {
    let metrics = Arc::new(Metrics::new());
    let hub = Arc::new(Hub::new(metrics.driver_messages_dropped.clone()));
    let stale_after = Duration::from_millis(config.dispatch.stale_after_ms);
    let fleet = Arc::new(Mutex::new(FleetIndex::new(stale_after)));
    let dispatcher = Arc::new(Dispatcher::new(
        config.dispatch.clone(),
        fleet.clone(),
        store.clone(),
        hub.clone(),
        metrics.clone(),
    ));
    Arc::new(Shared {
        tariff: config.tariff.tariff(),
        sockets: Arc::new(Semaphore::new(config.max_sockets)),
        config: config.clone(),
        store,
        fleet,
        dispatcher,
        hub,
        metrics,
        operator_token_hash: store::token_hash(operator_token),
        auth_cache: Mutex::default(),
        shutdown,
    })
}

/// Resolves once shutdown has begun (at once if it already has).
pub async fn stopping(shutdown: &mut watch::Receiver<bool>) {
    // An error means the sender is gone, which only happens once the server is gone too.
    let _ = shutdown.wait_for(|stopped| *stopped).await;
}

/// Drivers whose socket dropped and who stayed silent past the grace period go offline.
async fn sweep_offline_drivers(state: AppState, mut shutdown: watch::Receiver<bool>) {
    let offline_after = Duration::from_millis(state.config.dispatch.offline_after_ms);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopping(&mut shutdown) => return,
        }
        let (gone, online) = {
            let mut fleet = state.fleet.lock().unwrap();
            let gone = fleet.sweep_offline(Instant::now(), offline_after);
            (gone, fleet.len())
        };
        for driver_id in &gone {
            state.dispatcher.withdraw_offer_of(
                driver_id,
                WithdrawReason::Cancelled,
                Instant::now(),
            );
            tracing::debug!(%driver_id, "driver offline after grace period");
        }
        state.metrics.drivers_online.set(online as i64);
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
