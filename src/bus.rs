//! The bus between the nodes of a cluster (DESIGN §1): NATS, through the official client
//! (`async-nats`). Unset `HAIL_BUS_URL` means one node and no bus at all: publishing is a
//! no-op, since everything a node commits is applied locally first anyway.
//!
//! What crosses it, always *after* the store committed ([`Note`]): trip events, offers
//! made and closed, and each node's driver records (batched every [`FLEET_BATCH`]). A lost
//! message delays, never loses: streams fill seq gaps from the store, and the dispatch
//! leader re-reads waiting trips and open offers every few seconds. The bus carries no
//! truth of its own, so it needs no persistence (plain NATS subjects, not JetStream).

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::{
    fleet::DriverRecord,
    metrics::Metrics,
    protocol::{OfferMessage, rest::DependencyState},
    shutdown::Shutdown,
    store::{ClosedOffer, NewOffer},
    trip::{Timestamp, TripEvent},
};

/// How often a node publishes what changed among the drivers it holds. Also its
/// heartbeat on the bus: a node silent for [`NODE_SILENT_AFTER`] is taken for dead.
pub const FLEET_BATCH: Duration = Duration::from_millis(200);

/// A node not heard from for this long has lost its drivers' sockets (they are not
/// dispatchable until they show up again, here or elsewhere).
pub const NODE_SILENT_AFTER: Duration = Duration::from_secs(3);

/// Messages waiting to be published before new ones are dropped (and counted): a bus that
/// is down must not make a node grow without bound. Dropped news is repaired from the
/// store as described above.
const OUTBOX_CAPACITY: usize = 65_536;

/// Messages received but not yet applied before the bus waits for the node to catch up.
const INBOX_CAPACITY: usize = 65_536;

const SUBJECT_PREFIX: &str = "hail";

/// What one node tells the others.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Note {
    /// A committed trip change and the offers it closed.
    Trip {
        event: TripEvent,
        previous_driver: Option<String>,
        closed_offers: Vec<ClosedOffer>,
    },
    /// The leader made an offer: the node holding the driver's socket delivers it.
    OfferMade {
        offer: NewOffer,
        message: OfferMessage,
    },
    /// An offer was answered or closed.
    OfferClosed { closed: ClosedOffer, at: Timestamp },
    /// The drivers this node holds that changed.
    Fleet { records: Vec<DriverRecord> },
}

impl Note {
    fn subject(&self) -> &'static str {
        match self {
            Note::Trip { .. } => "hail.trip",
            Note::OfferMade { .. } | Note::OfferClosed { .. } => "hail.offer",
            Note::Fleet { .. } => "hail.fleet",
        }
    }
}

/// A note with who sent it and when.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope {
    pub node: String,
    /// When the sending process started: a node restarted under the same id is a new
    /// incarnation, and the drivers its predecessor held are gone with it.
    pub incarnation: Timestamp,
    pub sent_at: Timestamp,
    pub note: Note,
}

/// This node's end of the bus. Cheap to clone.
#[derive(Clone)]
pub struct Bus {
    node: Arc<str>,
    incarnation: Timestamp,
    nats: Option<Nats>,
    metrics: Arc<Metrics>,
}

#[derive(Clone)]
struct Nats {
    client: async_nats::Client,
    outbox: mpsc::Sender<(&'static str, Bytes)>,
}

impl Bus {
    /// One node: nobody to tell.
    pub fn none(node: &str, metrics: Arc<Metrics>) -> Bus {
        Bus {
            node: Arc::from(node),
            incarnation: Timestamp::now(),
            nats: None,
            metrics,
        }
    }

    /// Connects to NATS at `urls` (comma-separated `nats://…`), in the background if no
    /// server answers yet — a node starts and serves REST without its bus, and catches up
    /// when the bus appears. Returns the bus and the notes other nodes publish.
    pub async fn connect(
        urls: &str,
        node: &str,
        incarnation: Timestamp,
        metrics: Arc<Metrics>,
        shutdown: Shutdown,
    ) -> anyhow::Result<(Bus, mpsc::Receiver<Envelope>)> {
        let addresses = urls
            .split(',')
            .map(str::trim)
            .filter(|url| !url.is_empty())
            .map(|url| {
                url.parse::<async_nats::ServerAddr>()
                    .with_context(|| format!("HAIL_BUS_URL: {url:?} is not a nats:// URL"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        anyhow::ensure!(!addresses.is_empty(), "HAIL_BUS_URL names no server");
        let client = async_nats::ConnectOptions::new()
            .name(node)
            // A node applies its own changes before publishing them.
            .no_echo()
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connection_timeout(Duration::from_secs(2))
            // Reconnect quickly: the bus is in the same site, and every second without it
            // is a second of dispatch seeing only this node's drivers.
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis((100 * attempts as u64).min(1_000))
            })
            .connect(addresses)
            .await
            .context("connecting to NATS")?;
        let mut subscriber = client
            .subscribe(format!("{SUBJECT_PREFIX}.>"))
            .await
            .context("subscribing on NATS")?;
        let (outbox, mut outgoing) = mpsc::channel::<(&'static str, Bytes)>(OUTBOX_CAPACITY);
        let publisher = client.clone();
        let mut stop = shutdown.clone();
        tokio::spawn(async move {
            loop {
                let message = tokio::select! {
                    message = outgoing.recv() => message,
                    _ = stop.wait() => None,
                };
                let Some((subject, payload)) = message else {
                    break;
                };
                if let Err(error) = publisher.publish(subject, payload).await {
                    tracing::debug!(%error, "bus publish failed");
                }
            }
            let _ = publisher.flush().await;
        });
        let (inbox, incoming) = mpsc::channel(INBOX_CAPACITY);
        let receiving = metrics.clone();
        let mut stop = shutdown;
        tokio::spawn(async move {
            loop {
                let message = tokio::select! {
                    message = subscriber.next() => message,
                    _ = stop.wait() => None,
                };
                let Some(message) = message else { break };
                let envelope: Envelope = match serde_json::from_slice(&message.payload) {
                    Ok(envelope) => envelope,
                    Err(error) => {
                        tracing::warn!(%error, subject = %message.subject, "unreadable bus message");
                        continue;
                    }
                };
                receiving.bus_received.inc();
                let lag_ms = (Timestamp::now().millis() - envelope.sent_at.millis()).max(0);
                receiving.bus_lag.observe(lag_ms as f64 / 1_000.0);
                if inbox.send(envelope).await.is_err() {
                    break;
                }
            }
        });
        Ok((
            Bus {
                node: Arc::from(node),
                incarnation,
                nats: Some(Nats { client, outbox }),
                metrics,
            },
            incoming,
        ))
    }

    /// Whether other nodes listen.
    pub fn is_clustered(&self) -> bool {
        self.nats.is_some()
    }

    pub fn node(&self) -> &Arc<str> {
        &self.node
    }

    /// Tells the other nodes. Never blocks: a full outbox drops the note (counted).
    pub fn publish(&self, note: Note) {
        let Some(nats) = &self.nats else { return };
        let subject = note.subject();
        let envelope = Envelope {
            node: self.node.to_string(),
            incarnation: self.incarnation,
            sent_at: Timestamp::now(),
            note,
        };
        let payload = match serde_json::to_vec(&envelope) {
            Ok(payload) => Bytes::from(payload),
            Err(error) => {
                tracing::error!(%error, "a bus note did not serialize");
                return;
            }
        };
        if nats.outbox.try_send((subject, payload)).is_ok() {
            self.metrics.bus_published.inc();
        } else {
            self.metrics.bus_dropped.inc();
        }
    }

    pub fn state(&self) -> DependencyState {
        match &self.nats {
            None => DependencyState::NotConfigured,
            Some(nats) => match nats.client.connection_state() {
                async_nats::connection::State::Connected => DependencyState::Ok,
                _ => DependencyState::Unavailable,
            },
        }
    }
}
