//! `/v1/ops/ws`: the operator console's feed — a snapshot, then deltas.
//!
//! Driver movement is not forwarded ping by ping: every [`DRIVER_BATCH`] the socket task
//! asks the fleet what changed since its last batch, and it asks only after the previous
//! send finished — so a slow browser gets fewer, larger batches and the server never
//! queues movement for it. Trip events and offers come through a bounded broadcast; a
//! subscriber that lags gets a fresh snapshot.

use std::time::Duration;

use axum::{
    extract::{
        State,
        ws::{Message, Utf8Bytes, WebSocket, close_code},
    },
    response::{IntoResponse, Response},
};
use tokio::{sync::broadcast, time::Instant};

use super::{
    AppState,
    socket::{self, Admission, SocketKind, Upgrade},
};
use crate::{
    auth::Principal,
    error::ApiError,
    hub::OperatorMessage,
    ops,
    protocol::operators::OpsMessage,
    trip::{Role, Timestamp},
};

/// How often the console receives moved drivers.
const DRIVER_BATCH: Duration = Duration::from_millis(500);
/// How often the console receives figures.
const FIGURES_EVERY: Duration = Duration::from_secs(2);

#[utoipa::path(get, path = "/v1/ops/ws", tag = "sockets", security(("bearer" = [])),
    params(socket::Handshake,
           ("ticket" = Option<String>, Query, description = "A single-use ticket from POST /v1/ops/tickets (what the console uses: browsers cannot set headers)"),
           ("token" = Option<String>, Query, description = "Operator token, for clients that can set no header either (prefer a ticket: URLs end up in logs)")),
    responses((status = 101, description = "Operator stream: OpsMessage (snapshot, then drivers, trip_event, offer and figures)"),
              (status = 400, body = crate::protocol::rest::ErrorBody, description = "invalid_upgrade: not a WebSocket handshake"),
              (status = 401, body = crate::protocol::rest::ErrorBody), (status = 403, body = crate::protocol::rest::ErrorBody),
              (status = 426, body = crate::protocol::rest::ErrorBody, description = "upgrade_required: a WebSocket version other than 13",
               headers(("Sec-WebSocket-Version" = String, description = "13: the version this server speaks"))),
              (status = 503, body = crate::protocol::rest::ErrorBody, description = "Every operator stream is taken, or the store is unavailable",
               headers(("Retry-After" = u64, description = "Seconds until a retry may succeed")))))]
pub async fn ops_socket(
    State(state): State<AppState>,
    principal: Principal,
    Upgrade(upgrade): Upgrade,
) -> Result<Response, ApiError> {
    principal.require(Role::Operator)?;
    let permit = state.budgets.take(SocketKind::Operator, &principal.id)?;
    Ok(upgrade
        .max_write_buffer_size(socket::OPERATOR_MAX_WRITE_BUFFER_BYTES)
        .on_upgrade(move |socket| async move {
            let _permit = permit;
            state.rides.metrics.sockets_open.inc();
            run(&state, &principal, socket).await;
            state.rides.metrics.sockets_open.dec();
        })
        .into_response())
}

async fn send(socket: &mut WebSocket, message: &OpsMessage) -> Result<(), ()> {
    let text = serde_json::to_string(message).map_err(|_| ())?;
    socket
        .send(Message::Text(Utf8Bytes::from(text)))
        .await
        .map_err(|_| ())
}

/// Sends a fresh snapshot and returns the fleet version it reflects.
async fn resync(state: &AppState, socket: &mut WebSocket) -> Result<u64, ()> {
    let rides = &state.rides;
    let version = rides.fleet.version();
    match ops::snapshot(&rides.sources()).await {
        Ok(snapshot) => send(socket, &OpsMessage::Snapshot(snapshot))
            .await
            .map(|_| version),
        Err(error) => {
            let error = ApiError::from(error);
            let _ = send(
                socket,
                &OpsMessage::Error {
                    code: error.code,
                    message: error.message,
                },
            )
            .await;
            Err(())
        }
    }
}

async fn run(state: &AppState, principal: &Principal, mut socket: WebSocket) {
    let rides = &state.rides;
    // Subscribe first: an event between the snapshot and the subscription would be lost;
    // one in both is harmless (the console keys trips by id and seq).
    let mut live = rides.hub.subscribe_operators();
    let Ok(mut version) = resync(state, &mut socket).await else {
        return;
    };
    let mut shutdown = state.shutdown.clone();
    let mut drivers_tick = tokio::time::interval(DRIVER_BATCH);
    let mut figures_tick = tokio::time::interval(FIGURES_EVERY);
    // Missed ticks (a slow browser) are skipped, not bunched up.
    drivers_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    figures_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut budget = state.budgets.frames(Instant::now());
    loop {
        let sent = tokio::select! {
            _ = drivers_tick.tick() => {
                match rides.fleet.changed_since(version, Instant::now()) {
                    Some(changes) if changes.drivers.is_empty() && changes.removed.is_empty() => Ok(()),
                    Some(changes) => {
                        version = changes.version;
                        let drivers = changes.drivers.into_iter().map(|d| d.compact()).collect();
                        send(&mut socket, &OpsMessage::Drivers { drivers, removed: changes.removed }).await
                    }
                    None => resync(state, &mut socket).await.map(|v| version = v),
                }
            }
            _ = figures_tick.tick() => {
                // A revoked operator is cut off here too, not only at its next request.
                if let Ok(false) = state.auth.still_valid(principal).await {
                    let revoked = socket::close(close_code::POLICY, "operator revoked");
                    let _ = socket.send(revoked).await;
                    return;
                }
                // Drivers counted in place (no copy of the fleet), trips by the store: the
                // same on every node of a cluster.
                let mut stats = rides.fleet.stats(Instant::now());
                if let Ok((requested, active)) = rides.store.open_trip_counts().await {
                    stats.trips_requested = requested;
                    stats.trips_active = active;
                }
                let figures = rides.tally.figures(Timestamp::now());
                send(&mut socket, &OpsMessage::Figures { stats, figures }).await
            }
            message = live.recv() => match message {
                Ok(OperatorMessage::Event(event)) => send(&mut socket, &OpsMessage::TripEvent((*event).clone())).await,
                Ok(OperatorMessage::Offer(offer)) => send(&mut socket, &OpsMessage::Offer((*offer).clone())).await,
                Err(broadcast::error::RecvError::Lagged(_)) => resync(state, &mut socket).await.map(|v| version = v),
                Err(broadcast::error::RecvError::Closed) => Err(()),
            },
            frame = socket.recv() => match frame {
                Some(Ok(Message::Close(_))) | None => Err(()),
                Some(Err(error)) => {
                    if socket::too_big(&error) {
                        let _ = socket.send(socket::close_too_big()).await;
                    }
                    Err(())
                }
                // Nothing is expected from the console but keepalive; every frame counts.
                Some(Ok(_)) => match budget.admit(Instant::now()) {
                    Admission::Close => {
                        let _ = socket.send(socket::close_policy()).await;
                        Err(())
                    }
                    _ => Ok(()),
                },
            },
            _ = shutdown.wait() => {
                let _ = socket.send(Message::Close(None)).await;
                Err(())
            }
        };
        if sent.is_err() {
            return;
        }
    }
}
