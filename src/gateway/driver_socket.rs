//! `/v1/driver/ws`: the driver's socket. One reader and one writer task, a bounded
//! outbound queue (in the hub), a message budget; what each message means is
//! [`crate::rides::drivers`]'s business.

use axum::{
    extract::{
        State,
        ws::{Message, WebSocket, WebSocketUpgrade, close_code},
    },
    response::{IntoResponse, Response},
};
use futures_util::{SinkExt, StreamExt};
use tokio::{sync::mpsc, time::Instant};

use super::{
    AppState,
    socket::{self, IDLE_TIMEOUT, KEEPALIVE, MESSAGES_PER_SECOND, MessageBudget},
};
use crate::{
    auth::Principal,
    error::{ApiError, ErrorCode},
    hub::DriverOutbound,
    protocol::{DriverMessage, MAX_MESSAGE_BYTES, ServerMessage, close_code as hail_close},
    trip::Role,
};

/// Error replies queued for one driver socket before further ones are dropped.
const ERROR_QUEUE: usize = 8;

#[utoipa::path(get, path = "/v1/driver/ws", tag = "sockets", security(("bearer" = [])),
    params(("token" = Option<String>, Query, description = "Bearer token, for clients that cannot set headers")),
    responses((status = 101, description = "Driver socket: send DriverMessage, receive ServerMessage"),
              (status = 401, body = crate::protocol::rest::ErrorBody), (status = 403, body = crate::protocol::rest::ErrorBody),
              (status = 503, body = crate::protocol::rest::ErrorBody)))]
pub async fn driver_socket(
    State(state): State<AppState>,
    principal: Principal,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    principal.require(Role::Driver)?;
    let permit = socket::permit(&state)?;
    let trip_id = state.rides.driver_trip(&principal.id).await?;
    Ok(socket::configure(upgrade)
        .on_upgrade(move |socket| async move {
            let _permit = permit;
            run(state, principal.id, trip_id, socket).await;
        })
        .into_response())
}

async fn run(state: AppState, driver_id: String, trip_id: Option<String>, socket: WebSocket) {
    let rides = &state.rides;
    rides.metrics.sockets_open.inc();
    let (connection, mut outbound) = rides.hub.register_driver(&driver_id);
    rides.driver_connected(&driver_id, trip_id, Instant::now());
    let (error_sender, mut errors) = mpsc::channel::<ServerMessage>(ERROR_QUEUE);
    let (mut sink, mut stream) = socket.split();
    let mut shutdown = state.shutdown.clone();
    // An offer made before this socket (or on another node that died) is sent again.
    if let Ok(Some(offer)) = rides.open_offer(&driver_id).await {
        rides
            .hub
            .send_to_driver(&driver_id, ServerMessage::Offer(offer));
    }

    let writer = tokio::spawn(async move {
        let mut keepalive = tokio::time::interval_at(Instant::now() + KEEPALIVE, KEEPALIVE);
        loop {
            let message = tokio::select! {
                outgoing = outbound.recv() => match outgoing {
                    Some(DriverOutbound::Send(message)) => *message,
                    // A newer socket of the same driver took over, here or on another node.
                    Some(DriverOutbound::Replaced) | None => {
                        let _ = sink.send(socket::close(hail_close::REPLACED, "replaced by a newer connection")).await;
                        return;
                    }
                },
                Some(message) = errors.recv() => message,
                _ = keepalive.tick() => {
                    if sink.send(Message::Ping(Default::default())).await.is_err() { return; }
                    continue;
                }
                _ = shutdown.wait() => {
                    let _ = sink.send(socket::close(close_code::AWAY, "server shutting down")).await;
                    return;
                }
            };
            if sink.send(socket::text(&message)).await.is_err() {
                return;
            }
        }
    });

    let mut budget = MessageBudget::new(Instant::now());
    loop {
        let frame = match tokio::time::timeout(IDLE_TIMEOUT, stream.next()).await {
            Ok(Some(Ok(frame))) => frame,
            // Timed out, closed, or a protocol error (including an oversized frame).
            _ => break,
        };
        let now = Instant::now();
        let reply = match frame {
            Message::Text(_) if !budget.take(now) => Err(ApiError::new(
                ErrorCode::RateLimited,
                format!("at most {MESSAGES_PER_SECOND} messages a second; this one was dropped"),
            )),
            Message::Text(body) => handle(&state, &driver_id, body.as_str(), now),
            Message::Binary(_) => Err(ApiError::new(
                ErrorCode::UnsupportedFrame,
                "send JSON text frames",
            )),
            Message::Close(_) => break,
            Message::Ping(_) | Message::Pong(_) => Ok(()),
        };
        if let Err(error) = reply {
            let _ = error_sender.try_send(ServerMessage::Error {
                code: error.code,
                message: error.message,
            });
        }
        if writer.is_finished() {
            break;
        }
    }
    writer.abort();
    rides.hub.unregister_driver(&driver_id, connection);
    rides.driver_disconnected(&driver_id);
    rides.metrics.sockets_open.dec();
}

fn handle(state: &AppState, driver_id: &str, body: &str, now: Instant) -> Result<(), ApiError> {
    if body.len() > MAX_MESSAGE_BYTES {
        return Err(ApiError::new(
            ErrorCode::MessageTooLarge,
            format!("messages are limited to {MAX_MESSAGE_BYTES} bytes"),
        ));
    }
    let message: DriverMessage = serde_json::from_str(body).map_err(|error| match error.classify() {
        serde_json::error::Category::Data => ApiError::new(
            ErrorCode::InvalidMessage,
            format!("expected {{\"type\":\"location\",\"lat\",\"lng\"}} or {{\"type\":\"status\",\"status\":\"available\"|\"offline\"}}: {error}"),
        ),
        _ => ApiError::new(ErrorCode::MalformedJson, format!("not valid JSON: {error}")),
    })?;
    match message {
        DriverMessage::Location {
            lat,
            lng,
            heading_deg,
            speed_mps: _,
        } => state.rides.location(driver_id, lat, lng, heading_deg, now),
        DriverMessage::Status { status } => {
            state.rides.status(driver_id, status, now);
            Ok(())
        }
    }
}
