//! `/v1/driver/ws`: the driver's socket. One reader and one writer task, a bounded
//! outbound queue (in the hub), a message budget; what each message means is
//! [`crate::rides::drivers`]'s business.

use axum::{
    extract::{
        State,
        ws::{Message, WebSocket, close_code},
    },
    response::{IntoResponse, Response},
};
use futures_util::{SinkExt, StreamExt};
use tokio::{sync::mpsc, time::Instant};

use super::{
    AppState,
    socket::{self, Admission, IDLE_TIMEOUT, KEEPALIVE, SocketKind, Upgrade},
};
use crate::{
    auth::Principal,
    error::{ApiError, ErrorCode},
    fleet::DriverKey,
    hub::DriverOutbound,
    protocol::{DriverMessage, MAX_MESSAGE_BYTES, ServerMessage, close_code as hail_close},
    trip::Role,
};

/// Error replies queued for one driver socket before further ones are dropped.
const ERROR_QUEUE: usize = 8;

/// What the reader asks the writer to send: an error reply, or the close frame that ends
/// the socket.
enum Reply {
    Error(Box<ServerMessage>),
    Close(Message),
}

#[utoipa::path(get, path = "/v1/driver/ws", tag = "sockets", security(("bearer" = [])),
    params(socket::Handshake,
           ("token" = Option<String>, Query, description = "Bearer token, for clients that cannot set headers")),
    responses((status = 101, description = "Driver socket: send DriverMessage, receive ServerMessage"),
              (status = 400, body = crate::protocol::rest::ErrorBody, description = "invalid_upgrade: not a WebSocket handshake"),
              (status = 401, body = crate::protocol::rest::ErrorBody), (status = 403, body = crate::protocol::rest::ErrorBody),
              (status = 426, body = crate::protocol::rest::ErrorBody, description = "upgrade_required: a WebSocket version other than 13",
               headers(("Sec-WebSocket-Version" = String, description = "13: the version this server speaks"))),
              (status = 503, body = crate::protocol::rest::ErrorBody, description = "Every driver socket is taken, or the store is unavailable",
               headers(("Retry-After" = u64, description = "Seconds until a retry may succeed")))))]
pub async fn driver_socket(
    State(state): State<AppState>,
    principal: Principal,
    Upgrade(upgrade): Upgrade,
) -> Result<Response, ApiError> {
    principal.require(Role::Driver)?;
    let permit = state.budgets.take(SocketKind::Driver, &principal.id)?;
    let trip_id = state.rides.driver_trip(&principal.id).await?;
    Ok(upgrade
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
    let key = rides.driver_connected(&driver_id, trip_id, Instant::now());
    let (replies, mut replying) = mpsc::channel::<Reply>(ERROR_QUEUE);
    let (mut sink, mut stream) = socket.split();
    let mut shutdown = state.shutdown.clone();
    // An offer made before this socket (or on another node that died) is sent again.
    if let Ok(Some(offer)) = rides.open_offer(&driver_id).await {
        rides
            .hub
            .send_to_driver(&driver_id, ServerMessage::Offer(offer));
    }

    let mut writer = tokio::spawn(async move {
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
                reply = replying.recv() => match reply {
                    Some(Reply::Error(message)) => *message,
                    Some(Reply::Close(close)) => {
                        let _ = sink.send(close).await;
                        return;
                    }
                    // The reader is done: the socket is closing.
                    None => return,
                },
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

    let mut budget = state.budgets.frames(Instant::now());
    loop {
        let frame = match tokio::time::timeout(IDLE_TIMEOUT, stream.next()).await {
            Ok(Some(Ok(frame))) => frame,
            Ok(Some(Err(error))) if socket::too_big(&error) => {
                let _ = replies.try_send(Reply::Close(socket::close_too_big()));
                break;
            }
            // Timed out, closed, or a protocol error.
            _ => break,
        };
        if matches!(frame, Message::Close(_)) {
            break;
        }
        let now = Instant::now();
        let reply = match budget.admit(now) {
            Admission::Close => {
                let _ = replies.try_send(Reply::Close(socket::close_policy()));
                break;
            }
            Admission::Dropped => match frame {
                Message::Text(_) => Err(ApiError::new(
                    ErrorCode::RateLimited,
                    format!(
                        "at most {} messages a second; this one was dropped",
                        state.budgets.messages_per_s()
                    ),
                )),
                _ => Ok(()),
            },
            Admission::Allowed => match frame {
                Message::Text(body) => handle(&state, &key, body.as_str(), now),
                Message::Binary(_) => Err(ApiError::new(
                    ErrorCode::UnsupportedFrame,
                    "send JSON text frames",
                )),
                _ => Ok(()),
            },
        };
        if let Err(error) = reply {
            let _ = replies.try_send(Reply::Error(Box::new(ServerMessage::Error {
                code: error.code,
                message: error.message,
            })));
        }
        if writer.is_finished() {
            break;
        }
    }
    // Let the writer send what is queued (a close frame above all), briefly.
    drop(replies);
    if tokio::time::timeout(std::time::Duration::from_secs(1), &mut writer)
        .await
        .is_err()
    {
        writer.abort();
    }
    rides.hub.unregister_driver(&driver_id, connection);
    rides.driver_disconnected(&driver_id);
    rides.metrics.sockets_open.dec();
}

/// One text frame from a driver's socket: parsed, checked, applied. Public for the fuzz
/// target (`fuzz/fuzz_targets/driver_message.rs`), which feeds it what a socket could.
pub fn handle(
    state: &AppState,
    driver: &DriverKey,
    body: &str,
    now: Instant,
) -> Result<(), ApiError> {
    if body.len() > MAX_MESSAGE_BYTES {
        return Err(ApiError::new(
            ErrorCode::MessageTooLarge,
            format!("messages are limited to {MAX_MESSAGE_BYTES} bytes"),
        ));
    }
    let message = DriverMessage::from_json(body).map_err(|error| match error.classify() {
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
        } => state.rides.location(driver, lat, lng, heading_deg, now),
        DriverMessage::Status { status } => {
            state.rides.status(driver.id(), status, now);
            Ok(())
        }
    }
}
