//! The WebSocket gateways (DESIGN §3): the driver socket and the trip stream.
//!
//! Each socket has one reader and one writer, a bounded outbound queue, small buffers
//! (tungstenite's default read buffer is 128 KiB; at 250,000 drivers that alone would be
//! 32 GiB) and a message size limit. Ping/pong keeps dead peers from lingering.

use std::{collections::HashMap, time::Duration};

use axum::{
    extract::{
        Path, Query, State,
        ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade, close_code},
    },
    response::{IntoResponse, Response},
};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::{
    sync::{OwnedSemaphorePermit, broadcast, mpsc},
    time::Instant,
};
use utoipa::ToSchema;

use crate::{
    error::ApiError,
    fleet::DriverStatus,
    geometry::LatLng,
    http::{Principal, after_param},
    hub::{ServerMessage, TripMessage, WithdrawReason},
    rides::visible_trip,
    server::AppState,
    store::{EVENTS_PAGE, Role},
    trip::{EventKind, Timestamp, TripEvent},
};

/// Largest message a client may send. A location ping is about 100 bytes.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024;
/// Frames beyond this close the socket (1009); between the two a message gets an error
/// reply and the socket stays open.
const MAX_FRAME_BYTES: usize = 16 * 1024;
const READ_BUFFER_BYTES: usize = 4 * 1024;
const WRITE_BUFFER_BYTES: usize = 4 * 1024;
/// The writer's unsent backlog beyond which the socket is failed rather than grown.
const MAX_WRITE_BUFFER_BYTES: usize = 256 * 1024;
/// How often the server pings an idle peer.
const KEEPALIVE: Duration = Duration::from_secs(20);
/// A peer silent this long (not even a pong) is gone.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Sustained messages a second one driver may send (a ping every 4 s needs a quarter of
/// one), and the burst allowed above that.
const MESSAGES_PER_SECOND: f64 = 10.0;
const MESSAGE_BURST: f64 = 20.0;
/// Error replies queued for one driver socket before further ones are dropped.
const ERROR_QUEUE: usize = 8;

pub fn configure(upgrade: WebSocketUpgrade) -> WebSocketUpgrade {
    upgrade
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(WRITE_BUFFER_BYTES)
        .max_write_buffer_size(MAX_WRITE_BUFFER_BYTES)
        .max_message_size(MAX_FRAME_BYTES)
        .max_frame_size(MAX_FRAME_BYTES)
}

pub fn socket_permit(state: &AppState) -> Result<OwnedSemaphorePermit, ApiError> {
    state
        .sockets
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError::unavailable("too many open sockets; retry later"))
}

/// What a driver sends.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum DriverClientMessage {
    Location {
        lat: f64,
        lng: f64,
        heading_deg: Option<f64>,
        speed_mps: Option<f64>,
    },
    Status {
        status: DriverStatus,
    },
}

#[utoipa::path(get, path = "/v1/driver/ws", tag = "sockets", security(("bearer" = [])),
    params(("token" = Option<String>, Query, description = "Bearer token, for clients that cannot set headers")),
    responses((status = 101, description = "Driver socket: send DriverClientMessage, receive ServerMessage"),
              (status = 401, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody)))]
pub async fn driver_socket(
    State(state): State<AppState>,
    principal: Principal,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    principal.require(Role::Driver)?;
    let permit = socket_permit(&state)?;
    // The store knows whether this driver is on a trip (also after a restart).
    let trip = state.store.active_trip_of_driver(&principal.id).await?;
    Ok(configure(upgrade)
        .on_upgrade(move |socket| async move {
            let _permit = permit;
            run_driver_socket(state, principal.id, trip.map(|t| t.id), socket).await;
        })
        .into_response())
}

async fn run_driver_socket(
    state: AppState,
    driver_id: String,
    trip_id: Option<String>,
    socket: WebSocket,
) {
    state.metrics.sockets_open.inc();
    state
        .fleet
        .lock()
        .unwrap()
        .connect(&driver_id, trip_id, Instant::now());
    let (connection, mut outbound) = state.hub.register_driver(&driver_id);
    let (error_sender, mut errors) = mpsc::channel::<ServerMessage>(ERROR_QUEUE);
    let (mut sink, mut stream) = socket.split();
    let mut shutdown = state.shutdown.clone();

    let writer = tokio::spawn(async move {
        let mut keepalive = tokio::time::interval_at(Instant::now() + KEEPALIVE, KEEPALIVE);
        loop {
            let message = tokio::select! {
                message = outbound.recv() => match message {
                    Some(message) => message,
                    // Replaced by a newer socket of the same driver.
                    None => {
                        let _ = sink.send(close(close_code::NORMAL, "replaced by a newer connection")).await;
                        return;
                    }
                },
                Some(message) = errors.recv() => message,
                _ = keepalive.tick() => {
                    if sink.send(Message::Ping(Default::default())).await.is_err() { return; }
                    continue;
                }
                _ = crate::server::stopping(&mut shutdown) => {
                    let _ = sink.send(close(close_code::AWAY, "server shutting down")).await;
                    return;
                }
            };
            if sink.send(text(&message)).await.is_err() {
                return;
            }
        }
    });

    let mut last_location_sent: Option<Instant> = None;
    let mut budget = MessageBudget::new(Instant::now());
    let location_interval =
        Duration::from_millis(state.config.dispatch.driver_location_interval_ms);
    loop {
        let frame = match tokio::time::timeout(IDLE_TIMEOUT, stream.next()).await {
            Ok(Some(Ok(frame))) => frame,
            // Timed out, closed, or a protocol error (including an oversized frame).
            _ => break,
        };
        let reply = match frame {
            Message::Text(_) if !budget.take(Instant::now()) => Err(ApiError::new(
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("at most {MESSAGES_PER_SECOND} messages a second; this one was dropped"),
            )),
            Message::Text(body) => handle_driver_message(
                &state,
                &driver_id,
                body.as_str(),
                &mut last_location_sent,
                location_interval,
            ),
            Message::Binary(_) => Err(ApiError::bad_request(
                "unsupported_frame",
                "send JSON text frames",
            )),
            Message::Close(_) => break,
            Message::Ping(_) | Message::Pong(_) => Ok(()),
        };
        if let Err(error) = reply {
            let _ = error_sender.try_send(ServerMessage::Error {
                code: error.code.to_string(),
                message: error.message,
            });
        }
        if writer.is_finished() {
            break;
        }
    }
    writer.abort();
    state.hub.unregister_driver(&driver_id, connection);
    state.fleet.lock().unwrap().disconnect(&driver_id);
    state.metrics.sockets_open.dec();
}

/// A token bucket: a misbehaving client cannot make the server do unbounded work.
struct MessageBudget {
    tokens: f64,
    refilled: Instant,
}

impl MessageBudget {
    fn new(now: Instant) -> MessageBudget {
        MessageBudget {
            tokens: MESSAGE_BURST,
            refilled: now,
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        let earned =
            now.saturating_duration_since(self.refilled).as_secs_f64() * MESSAGES_PER_SECOND;
        self.tokens = (self.tokens + earned).min(MESSAGE_BURST);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

fn handle_driver_message(
    state: &AppState,
    driver_id: &str,
    body: &str,
    last_location_sent: &mut Option<Instant>,
    location_interval: Duration,
) -> Result<(), ApiError> {
    if body.len() > MAX_MESSAGE_BYTES {
        return Err(ApiError::bad_request(
            "message_too_large",
            format!("messages are limited to {MAX_MESSAGE_BYTES} bytes"),
        ));
    }
    let message: DriverClientMessage = serde_json::from_str(body).map_err(|error| match error.classify() {
        serde_json::error::Category::Data => ApiError::bad_request(
            "invalid_message",
            format!("expected {{\"type\":\"location\",\"lat\",\"lng\"}} or {{\"type\":\"status\",\"status\":\"available\"|\"offline\"}}: {error}"),
        ),
        _ => ApiError::bad_request("malformed_json", format!("not valid JSON: {error}")),
    })?;
    let now = Instant::now();
    match message {
        DriverClientMessage::Location {
            lat,
            lng,
            heading_deg,
            speed_mps: _,
        } => {
            let position = LatLng::new(lat, lng)
                .map_err(|e| ApiError::bad_request("invalid_coordinates", e.to_string()))?;
            let outcome = state
                .fleet
                .lock()
                .unwrap()
                .ping(driver_id, position, heading_deg, now);
            let Some(outcome) = outcome else {
                return Ok(());
            };
            state.metrics.location_pings.inc();
            if outcome.became_dispatchable {
                state.dispatcher.driver_available();
            }
            if let Some(trip_id) = outcome.trip_id
                && last_location_sent
                    .is_none_or(|sent| now.duration_since(sent) >= location_interval)
            {
                *last_location_sent = Some(now);
                state
                    .hub
                    .publish_driver_location(&trip_id, position, Timestamp::now());
            }
        }
        DriverClientMessage::Status { status } => {
            let became_dispatchable = state
                .fleet
                .lock()
                .unwrap()
                .set_status(driver_id, status, now);
            match status {
                DriverStatus::Available if became_dispatchable => {
                    state.dispatcher.driver_available()
                }
                DriverStatus::Offline => {
                    state
                        .dispatcher
                        .withdraw_offer_of(driver_id, WithdrawReason::Cancelled, now)
                }
                DriverStatus::Available => {}
            }
        }
    }
    Ok(())
}

#[utoipa::path(get, path = "/v1/trips/{id}/ws", tag = "sockets", security(("bearer" = [])),
    params(("after" = Option<i64>, Query, description = "Replay events with seq > after first"),
           ("token" = Option<String>, Query, description = "Bearer token, for clients that cannot set headers")),
    responses((status = 101, description = "Trip stream: trip_event and driver_location messages"),
              (status = 400, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody)))]
pub async fn trip_socket(
    State(state): State<AppState>,
    principal: Principal,
    Path(trip_id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let after = after_param(&query)?;
    visible_trip(&state, &principal, &trip_id).await?;
    let permit = socket_permit(&state)?;
    let driver = (principal.role == Role::Driver).then_some(principal.id);
    Ok(configure(upgrade)
        .on_upgrade(move |socket| async move {
            let _permit = permit;
            state.metrics.sockets_open.inc();
            run_trip_stream(&state, &trip_id, after, driver.as_deref(), socket).await;
            state.hub.unsubscribe_trip(&trip_id);
            state.metrics.sockets_open.dec();
        })
        .into_response())
}

/// Replays from the store, then forwards live messages. Subscribing before the replay
/// means nothing committed in between is missed; seqs already sent are skipped, and a gap
/// (a lagging subscriber) is filled from the store, so every event arrives exactly once.
///
/// A driver watches only while the trip is theirs: the stream ends after the event by
/// which they gave it back, since what follows is another driver's business.
async fn run_trip_stream(
    state: &AppState,
    trip_id: &str,
    after: i64,
    driver: Option<&str>,
    mut socket: WebSocket,
) {
    let mut live = state.hub.subscribe_trip(trip_id);
    let mut last_seq = after;
    let mut shutdown = state.shutdown.clone();
    if catch_up(state, trip_id, &mut last_seq, driver, &mut socket)
        .await
        .is_err()
    {
        return;
    }
    let mut keepalive = tokio::time::interval_at(Instant::now() + KEEPALIVE, KEEPALIVE);
    let mut last_heard = Instant::now();
    loop {
        tokio::select! {
            message = live.recv() => {
                let sent = match message {
                    Ok(TripMessage::Event(event)) if event.seq <= last_seq => Ok(()),
                    Ok(TripMessage::Event(event)) if event.seq == last_seq + 1 => {
                        last_seq = event.seq;
                        match send_event(&mut socket, &event).await {
                            Ok(()) => no_longer_theirs(&mut socket, &event, driver).await,
                            failed => failed,
                        }
                    }
                    Ok(TripMessage::Event(_)) | Err(broadcast::error::RecvError::Lagged(_)) => {
                        catch_up(state, trip_id, &mut last_seq, driver, &mut socket).await
                    }
                    Ok(TripMessage::DriverLocation { lat, lng, at }) => {
                        let message = ServerMessage::DriverLocation { trip_id: trip_id.to_string(), lat, lng, at };
                        socket.send(text(&message)).await.map_err(|_| ())
                    }
                    Err(broadcast::error::RecvError::Closed) => Err(()),
                };
                if sent.is_err() {
                    return;
                }
            }
            frame = socket.recv() => match frame {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                // Nothing is expected from the client; any frame proves it is alive.
                Some(Ok(_)) => last_heard = Instant::now(),
            },
            _ = keepalive.tick() => {
                if last_heard.elapsed() > IDLE_TIMEOUT || socket.send(Message::Ping(Default::default())).await.is_err() {
                    return;
                }
            }
            _ = crate::server::stopping(&mut shutdown) => {
                let _ = socket.send(close(close_code::AWAY, "server shutting down")).await;
                return;
            }
        }
    }
}

async fn catch_up(
    state: &AppState,
    trip_id: &str,
    last_seq: &mut i64,
    driver: Option<&str>,
    socket: &mut WebSocket,
) -> Result<(), ()> {
    loop {
        let events = match state.store.events_after(trip_id, *last_seq).await {
            Ok(events) => events,
            Err(error) => {
                tracing::warn!(%trip_id, %error, "trip stream could not read the store");
                let message = ServerMessage::Error {
                    code: "unavailable".into(),
                    message: "the store is unavailable; reconnect with after=<last seq>".into(),
                };
                let _ = socket.send(text(&message)).await;
                let _ = socket
                    .send(close(close_code::AGAIN, "store unavailable"))
                    .await;
                return Err(());
            }
        };
        let full_page = events.len() as i64 >= EVENTS_PAGE;
        for event in &events {
            send_event(socket, event).await?;
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
            if newest.event == EventKind::DriverCancelled
                && newest.trip.driver_id.as_deref() != Some(driver) =>
        {
            let _ = socket
                .send(close(close_code::NORMAL, "no longer your trip"))
                .await;
            Err(())
        }
        _ => Ok(()),
    }
}

async fn send_event(socket: &mut WebSocket, event: &TripEvent) -> Result<(), ()> {
    socket
        .send(text(&ServerMessage::TripEvent(event.clone())))
        .await
        .map_err(|_| ())
}

fn text(message: &ServerMessage) -> Message {
    // Serializing our own message types cannot fail: no maps with non-string keys.
    Message::Text(Utf8Bytes::from(
        serde_json::to_string(message).expect("server messages serialize"),
    ))
}

fn close(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_budget_allows_a_burst_then_the_sustained_rate() {
        let start = Instant::now();
        let mut budget = MessageBudget::new(start);
        let burst = (0..100).filter(|_| budget.take(start)).count();
        assert_eq!(burst, MESSAGE_BURST as usize);
        assert!(!budget.take(start + Duration::from_millis(50)));
        assert!(budget.take(start + Duration::from_millis(100)));
        let a_second_later = start + Duration::from_millis(1_100);
        let sustained = (0..100).filter(|_| budget.take(a_second_later)).count();
        assert_eq!(sustained, MESSAGES_PER_SECOND as usize);
    }
}
