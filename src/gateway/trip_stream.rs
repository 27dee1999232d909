//! `/v1/trips/{id}/ws?after=N`: a trip's events, replayed from the store and then live,
//! each exactly once and in order (invariant 4), plus the driver's position while one is
//! assigned.

use std::time::Duration;

use axum::{
    extract::{
        Path, Query, State,
        ws::{Message, WebSocket, close_code},
    },
    response::{IntoResponse, Response},
};
use std::collections::HashMap;
use tokio::{sync::broadcast, time::Instant};

use super::{
    AppState, after_param,
    socket::{self, Admission, IDLE_TIMEOUT, KEEPALIVE, SocketKind, Upgrade},
};
use crate::{
    auth::Principal,
    error::{ApiError, ErrorCode},
    hub::TripMessage,
    protocol::{ServerMessage, close_code as hail_close},
    store::EVENTS_PAGE,
    trip::{EventKind, Role, TripEvent},
};

/// How often a stream that heard nothing asks the store for the trip's latest seq, in a
/// cluster: a lost *last* event (a bus message that never came) arrives within this. One
/// node has no bus to lose anything, and does not ask.
const IDLE_CHECK: Duration = Duration::from_secs(3);

#[utoipa::path(get, path = "/v1/trips/{id}/ws", tag = "sockets", security(("bearer" = [])),
    params(("id" = String, Path, description = "Trip id"),
           socket::Handshake,
           ("after" = Option<i64>, Query, minimum = 0, maximum = 9223372036854775807i64, description = "Replay events with seq > after first"),
           ("token" = Option<String>, Query, description = "Bearer token, for clients that cannot set headers")),
    responses((status = 101, description = "Trip stream: trip_event and driver_location messages"),
              (status = 400, body = crate::protocol::rest::ErrorBody, description = "invalid_after, or invalid_upgrade: not a WebSocket handshake"),
              (status = 401, body = crate::protocol::rest::ErrorBody), (status = 404, body = crate::protocol::rest::ErrorBody),
              (status = 426, body = crate::protocol::rest::ErrorBody, description = "upgrade_required: a WebSocket version other than 13",
               headers(("Sec-WebSocket-Version" = String, description = "13: the version this server speaks"))),
              (status = 429, body = crate::protocol::rest::ErrorBody, description = "too_many_sockets: this account holds as many trip streams as it may"),
              (status = 503, body = crate::protocol::rest::ErrorBody, description = "Every trip stream is taken, or the store is unavailable",
               headers(("Retry-After" = u64, description = "Seconds until a retry may succeed")))))]
pub async fn trip_socket(
    State(state): State<AppState>,
    principal: Principal,
    Path(trip_id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    Upgrade(upgrade): Upgrade,
) -> Result<Response, ApiError> {
    let after = after_param(&query)?;
    state.rides.visible_trip(&principal, &trip_id).await?;
    let permit = state.budgets.take(SocketKind::TripStream, &principal.id)?;
    Ok(upgrade
        .on_upgrade(move |socket| async move {
            let _permit = permit;
            let rides = &state.rides;
            rides.metrics.sockets_open.inc();
            run(&state, &trip_id, after, &principal, socket).await;
            rides.hub.unsubscribe_trip(&trip_id);
            rides.metrics.sockets_open.dec();
        })
        .into_response())
}

/// Replays from the store, then forwards live messages. Subscribing before the replay
/// means nothing committed in between is missed; seqs already sent are skipped, and a gap
/// (a lagging subscriber, a lost bus message) is filled from the store, so every event
/// arrives exactly once.
///
/// A driver watches only while the trip is theirs: the stream ends after the event by
/// which they gave it back, since what follows is another driver's business.
async fn run(
    state: &AppState,
    trip_id: &str,
    after: i64,
    viewer: &Principal,
    mut socket: WebSocket,
) {
    let mut live = state.rides.hub.subscribe_trip(trip_id);
    let driver = (viewer.role == Role::Driver).then_some(viewer.id.as_str());
    let mut last_seq = after;
    let mut shutdown = state.shutdown.clone();
    if catch_up(state, trip_id, &mut last_seq, viewer, &mut socket)
        .await
        .is_err()
    {
        return;
    }
    let mut keepalive = tokio::time::interval_at(Instant::now() + KEEPALIVE, KEEPALIVE);
    let clustered = state.rides.bus.is_clustered();
    let mut idle_check = tokio::time::interval_at(Instant::now() + IDLE_CHECK, IDLE_CHECK);
    let mut last_heard = Instant::now();
    let mut budget = state.budgets.frames(Instant::now());
    loop {
        tokio::select! {
            message = live.recv() => {
                let sent = match message {
                    Ok(TripMessage::Event(event)) if event.seq <= last_seq => Ok(()),
                    Ok(TripMessage::Event(event)) if event.seq == last_seq + 1 => {
                        last_seq = event.seq;
                        match send_event(&mut socket, viewer, &event).await {
                            Ok(()) => no_longer_theirs(&mut socket, &event, driver).await,
                            failed => failed,
                        }
                    }
                    Ok(TripMessage::Event(_)) | Err(broadcast::error::RecvError::Lagged(_)) => {
                        catch_up(state, trip_id, &mut last_seq, viewer, &mut socket).await
                    }
                    Ok(TripMessage::DriverLocation { lat, lng, at }) => {
                        let message = ServerMessage::DriverLocation { trip_id: trip_id.to_string(), lat, lng, at };
                        socket.send(socket::text(&message)).await.map_err(|_| ())
                    }
                    Err(broadcast::error::RecvError::Closed) => Err(()),
                };
                if sent.is_err() {
                    return;
                }
                idle_check.reset();
            }
            frame = socket.recv() => match frame {
                Some(Ok(Message::Close(_))) | None => return,
                Some(Err(error)) => {
                    if socket::too_big(&error) {
                        let _ = socket.send(socket::close_too_big()).await;
                    }
                    return;
                }
                // Nothing is expected from the client; any frame proves it is alive, and
                // counts against its budget.
                Some(Ok(_)) => {
                    last_heard = Instant::now();
                    if budget.admit(last_heard) == Admission::Close {
                        let _ = socket.send(socket::close_policy()).await;
                        return;
                    }
                }
            },
            _ = idle_check.tick(), if clustered => {
                let behind = state.rides.store.latest_seq(trip_id).await.is_ok_and(|seq| seq > last_seq);
                if behind && catch_up(state, trip_id, &mut last_seq, viewer, &mut socket).await.is_err() {
                    return;
                }
            }
            _ = keepalive.tick() => {
                if last_heard.elapsed() > IDLE_TIMEOUT || socket.send(Message::Ping(Default::default())).await.is_err() {
                    return;
                }
            }
            _ = shutdown.wait() => {
                let _ = socket.send(socket::close(close_code::AWAY, "server shutting down")).await;
                return;
            }
        }
    }
}

async fn catch_up(
    state: &AppState,
    trip_id: &str,
    last_seq: &mut i64,
    viewer: &Principal,
    socket: &mut WebSocket,
) -> Result<(), ()> {
    let driver = (viewer.role == Role::Driver).then_some(viewer.id.as_str());
    loop {
        let events = match state.rides.store.events_after(trip_id, *last_seq).await {
            Ok(events) => events,
            Err(error) => {
                tracing::warn!(%trip_id, %error, "trip stream could not read the store");
                let message = ServerMessage::Error {
                    code: ErrorCode::Unavailable,
                    message: "the store is unavailable; reconnect with after=<last seq>".into(),
                };
                let _ = socket.send(socket::text(&message)).await;
                let _ = socket
                    .send(socket::close(close_code::AGAIN, "store unavailable"))
                    .await;
                return Err(());
            }
        };
        let full_page = events.len() as i64 >= EVENTS_PAGE;
        for event in &events {
            send_event(socket, viewer, event).await?;
            *last_seq = event.seq;
        }
        if !full_page {
            // Only the newest event tells whose trip it is now.
            return match events.last() {
                Some(newest) => no_longer_theirs(socket, newest, driver).await,
                None => Ok(()),
            };
        }
    }
}

/// Closes a driver's stream once `newest` took the trip away from them (`Err` = stop).
async fn no_longer_theirs(
    socket: &mut WebSocket,
    newest: &TripEvent,
    driver: Option<&str>,
) -> Result<(), ()> {
    match driver {
        Some(driver)
            if matches!(
                newest.event,
                EventKind::DriverCancelled | EventKind::DriverLost
            ) && newest.trip.driver_id.as_deref() != Some(driver) =>
        {
            let _ = socket
                .send(socket::close(
                    hail_close::NO_LONGER_YOURS,
                    "no longer your trip",
                ))
                .await;
            Err(())
        }
        _ => Ok(()),
    }
}

async fn send_event(
    socket: &mut WebSocket,
    viewer: &Principal,
    event: &TripEvent,
) -> Result<(), ()> {
    socket
        .send(socket::text(&ServerMessage::TripEvent(
            viewer.redact(event.clone()),
        )))
        .await
        .map_err(|_| ())
}
