//! This node in the cluster (DESIGN §1): its identity, and the dispatch lease it holds or
//! waits for. The lease is a row in the store ([`crate::store::Lease`]); this module keeps
//! it — renewing it while leading, taking it over when it lapses — and tells the dispatch
//! loop through a `watch` channel whether to lead.
//!
//! One node (no bus) takes the lease at once at start, whatever its state: by
//! configuration there is no other node, and a previous incarnation killed with `kill -9`
//! must not hold dispatch up until its lease expires. The new epoch fences that
//! incarnation off all the same.

use std::{sync::Arc, time::Duration};

use tokio::{sync::watch, time::Instant};

use crate::{
    config::ClusterConfig,
    fleet::Fleet,
    ids::new_id,
    metrics::Metrics,
    shutdown::Shutdown,
    store::{Fence, NodeRow, Store},
    trip::Timestamp,
};

/// Nodes silent for this long are dropped from the node list.
const FORGET_NODES_AFTER_MS: i64 = 3_600_000;

/// Who this node is.
#[derive(Debug, Clone)]
pub struct Node {
    pub id: String,
    /// Where clients reach it.
    pub url: String,
    pub started_at: Timestamp,
}

impl Node {
    pub fn new(config: &ClusterConfig, listening: std::net::SocketAddr) -> Node {
        Node {
            id: config.node_id.clone().unwrap_or_else(|| new_id("node")),
            url: config
                .advertise_url
                .clone()
                .unwrap_or_else(|| format!("http://{listening}")),
            started_at: Timestamp::now(),
        }
    }
}

/// What keeping the lease needs.
pub struct LeaseKeeper {
    pub store: Store,
    pub node: Node,
    pub config: ClusterConfig,
    /// One node, no bus: take the lease at once at start.
    pub single: bool,
    /// For this node's report: the drivers it holds.
    pub fleet: Arc<Fleet>,
    pub metrics: Arc<Metrics>,
}

/// Keeps the dispatch lease: renews it while leading, takes it when it lapses, and says
/// which through `leadership`. Also reports this node in the node list each round.
pub async fn keep_lease(
    keeper: LeaseKeeper,
    leadership: watch::Sender<Option<Fence>>,
    mut shutdown: Shutdown,
) {
    let LeaseKeeper {
        store,
        node,
        config,
        single,
        fleet,
        metrics,
    } = keeper;
    let ttl = Duration::from_millis(config.lease_ttl_ms);
    let renew_every = Duration::from_millis(config.lease_renew_ms);
    let mut fence: Option<Fence> = None;
    // When the last successful renewal was *sent*: the lease runs out `ttl` after that at
    // the latest, by this node's clock.
    let mut renewed_at = Instant::now();
    let mut force = single;
    loop {
        let started = Instant::now();
        let wall = Timestamp::now();
        let (_, drivers_connected) = fleet.held_here();
        let report = NodeRow {
            id: node.id.clone(),
            url: node.url.clone(),
            drivers_connected: drivers_connected as i64,
            sockets: metrics.sockets_open.get(),
            started_at: node.started_at,
            last_seen: wall,
        };
        if let Err(error) = store.heartbeat(&report, FORGET_NODES_AFTER_MS).await {
            tracing::debug!(%error, "could not report this node");
        }
        let expires_at = wall.plus_ms(config.lease_ttl_ms);
        let mut wait = renew_every;
        match &fence {
            Some(held) => match store.renew_lease(held, expires_at).await {
                Ok(true) => renewed_at = started,
                Ok(false) => {
                    tracing::warn!(
                        epoch = held.epoch,
                        "dispatch lease taken over by another node"
                    );
                    fence = None;
                }
                Err(error) => {
                    // Not provably ours any more before a standby may take it: stop first.
                    if started.saturating_duration_since(renewed_at) + renew_every >= ttl {
                        tracing::warn!(%error, "cannot renew the dispatch lease; standing by");
                        fence = None;
                    }
                }
            },
            None => match store.acquire_lease(&node.id, wall, expires_at, force).await {
                Ok(Ok(taken)) => {
                    tracing::info!(node = %node.id, epoch = taken.epoch, "took the dispatch lease");
                    renewed_at = started;
                    force = false;
                    fence = Some(taken);
                }
                Ok(Err(lease)) => {
                    metrics.dispatch_epoch.set(lease.epoch);
                    // Try again as soon as it can lapse, not a whole round later.
                    let left_ms = (lease.expires_at.millis() - Timestamp::now().millis()).max(0);
                    wait = wait.min(Duration::from_millis(left_ms as u64 + 10));
                }
                Err(error) => tracing::debug!(%error, "cannot read the dispatch lease"),
            },
        }
        if leadership.borrow().as_ref() != fence.as_ref() {
            leadership.send_replace(fence.clone());
        }
        metrics.dispatch_leader.set(i64::from(fence.is_some()));
        if let Some(held) = &fence {
            metrics.dispatch_epoch.set(held.epoch);
        }
        tokio::select! {
            _ = tokio::time::sleep_until(started + wait) => {}
            _ = shutdown.wait() => {
                leadership.send_replace(None);
                if let Some(held) = fence {
                    // Hand over at once instead of making a standby wait for the lapse.
                    let _ = store.release_lease(&held).await;
                }
                return;
            }
        }
    }
}
