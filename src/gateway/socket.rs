//! What every WebSocket of hail shares: small buffers (tungstenite's default read buffer
//! is 128 KiB; at 250,000 drivers that alone would be 32 GiB), message and frame limits,
//! ping/pong keepalive, a message budget, the socket cap, and close frames.

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocketUpgrade};
use tokio::{sync::OwnedSemaphorePermit, time::Instant};

use super::AppState;
use crate::{
    error::ApiError,
    protocol::{MAX_FRAME_BYTES, ServerMessage},
};

const READ_BUFFER_BYTES: usize = 4 * 1024;
const WRITE_BUFFER_BYTES: usize = 4 * 1024;
/// The writer's unsent backlog beyond which the socket is failed rather than grown.
const MAX_WRITE_BUFFER_BYTES: usize = 256 * 1024;
/// How often the server pings an idle peer.
pub const KEEPALIVE: Duration = Duration::from_secs(20);
/// A peer silent this long (not even a pong) is gone.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Sustained messages a second one driver may send (a ping every 4 s needs a quarter of
/// one), and the burst allowed above that.
pub const MESSAGES_PER_SECOND: f64 = 10.0;
pub const MESSAGE_BURST: f64 = 20.0;

pub fn configure(upgrade: WebSocketUpgrade) -> WebSocketUpgrade {
    upgrade
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(WRITE_BUFFER_BYTES)
        .max_write_buffer_size(MAX_WRITE_BUFFER_BYTES)
        .max_message_size(MAX_FRAME_BYTES)
        .max_frame_size(MAX_FRAME_BYTES)
}

/// A place under the socket cap, held while the socket is open.
pub fn permit(state: &AppState) -> Result<OwnedSemaphorePermit, ApiError> {
    state
        .sockets
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError::unavailable("too many open sockets; retry later"))
}

pub fn text(message: &ServerMessage) -> Message {
    Message::Text(Utf8Bytes::from(message.to_json()))
}

pub fn close(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    }))
}

/// A token bucket: a misbehaving client cannot make the server do unbounded work.
pub struct MessageBudget {
    tokens: f64,
    refilled: Instant,
}

impl MessageBudget {
    pub fn new(now: Instant) -> MessageBudget {
        MessageBudget {
            tokens: MESSAGE_BURST,
            refilled: now,
        }
    }

    pub fn take(&mut self, now: Instant) -> bool {
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
