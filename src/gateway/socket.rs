//! What every WebSocket of hail shares: small buffers (tungstenite's default read buffer
//! is 128 KiB; at 250,000 drivers that alone would be 32 GiB), message and frame limits,
//! ping/pong keepalive, a message budget, the socket cap, and close frames.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocketUpgrade};
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore},
    time::Instant,
};

use crate::{
    config::LimitsConfig,
    error::{ApiError, ErrorCode},
    protocol::{MAX_FRAME_BYTES, ServerMessage},
};

const READ_BUFFER_BYTES: usize = 4 * 1024;
const WRITE_BUFFER_BYTES: usize = 4 * 1024;
/// The writer's unsent backlog beyond which the socket is failed rather than grown.
const MAX_WRITE_BUFFER_BYTES: usize = 256 * 1024;
/// The same for an operator's stream, whose first message is the snapshot of the whole
/// fleet and every open trip: about 200 bytes a driver, so tens of megabytes for a
/// country. Operators are few, known and budgeted ([`SocketKind::Operator`]).
pub const OPERATOR_MAX_WRITE_BUFFER_BYTES: usize = 128 * 1024 * 1024;
/// How often the server pings an idle peer.
pub const KEEPALIVE: Duration = Duration::from_secs(20);
/// A peer silent this long (not even a pong) is gone.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// A WebSocket handshake, with every way it can be wrong answered in our error format
/// (axum's own rejections are plain text): 426 and `Sec-WebSocket-Version: 13` for a
/// version the server does not speak, 400 `invalid_upgrade` for the rest (a missing
/// version or a malformed key included).
pub struct Upgrade(pub WebSocketUpgrade);

/// The handshake's headers (RFC 6455 §4.1) as `/openapi.json` states them for every
/// socket route, so that a client reading the document knows a plain GET gets 400. Each
/// pattern accepts exactly what [`Upgrade`] accepts: axum looks for `upgrade` anywhere in
/// `Connection` and compares `Upgrade` without case; the key's shape is checked here.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[expect(
    dead_code,
    reason = "read by the OpenAPI document only; `Upgrade` parses them"
)]
pub struct Handshake {
    #[param(
        rename = "Connection",
        pattern = "[Uu][Pp][Gg][Rr][Aa][Dd][Ee]",
        example = "Upgrade"
    )]
    connection: String,
    #[param(
        rename = "Upgrade",
        pattern = "^[Ww][Ee][Bb][Ss][Oo][Cc][Kk][Ee][Tt]$",
        example = "websocket"
    )]
    upgrade: String,
    /// Any other version is answered 426 with `Sec-WebSocket-Version: 13`.
    #[param(rename = "Sec-WebSocket-Version", pattern = "^13$", example = "13")]
    version: String,
    /// 16 random bytes in base64.
    #[param(
        rename = "Sec-WebSocket-Key",
        pattern = "^[A-Za-z0-9+/]{21}[AQgw]==$",
        example = "dGhlIHNhbXBsZSBub25jZQ=="
    )]
    key: String,
}

/// Whether `key` is 16 bytes in base64, as RFC 6455 §4.1 requires of
/// `Sec-WebSocket-Key`: 22 digits, the last with its four unused bits clear, then `==`.
fn valid_websocket_key(key: &[u8]) -> bool {
    let is_digit = |b: &u8| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/';
    key.len() == 24
        && key[..21].iter().all(is_digit)
        && matches!(key[21], b'A' | b'Q' | b'g' | b'w')
        && &key[22..] == b"=="
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Upgrade {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        use axum::extract::ws::rejection::WebSocketUpgradeRejection as Rejection;
        // No version at all is no handshake (400, RFC 6455 §4.2.1); 426 is for a version
        // this server does not speak (§4.4), and axum answers both alike.
        if !parts
            .headers
            .contains_key(axum::http::header::SEC_WEBSOCKET_VERSION)
        {
            return Err(ApiError::new(
                ErrorCode::InvalidUpgrade,
                "a WebSocket handshake needs Sec-WebSocket-Version: 13",
            ));
        }
        let upgrade = WebSocketUpgrade::from_request_parts(parts, state)
            .await
            .map_err(|rejection| match rejection {
                Rejection::InvalidWebSocketVersionHeader(_) => ApiError::new(
                    ErrorCode::UpgradeRequired,
                    "this server speaks WebSocket version 13 (Sec-WebSocket-Version: 13)",
                ),
                other => ApiError::new(ErrorCode::InvalidUpgrade, other.body_text()),
            })?;
        // axum only asks that the key be there; RFC 6455 §4.2.1 has the server refuse a
        // handshake whose key is not 16 bytes in base64.
        let key = parts.headers.get(axum::http::header::SEC_WEBSOCKET_KEY);
        if !key.is_some_and(|key| valid_websocket_key(key.as_bytes())) {
            return Err(ApiError::new(
                ErrorCode::InvalidUpgrade,
                "Sec-WebSocket-Key must be 16 bytes in base64 (RFC 6455)",
            ));
        }
        Ok(Upgrade(configure(upgrade)))
    }
}

fn configure(upgrade: WebSocketUpgrade) -> WebSocketUpgrade {
    upgrade
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(WRITE_BUFFER_BYTES)
        .max_write_buffer_size(MAX_WRITE_BUFFER_BYTES)
        .max_message_size(MAX_FRAME_BYTES)
        .max_frame_size(MAX_FRAME_BYTES)
}

/// The kinds of socket, each with its own budget: passengers opening streams can never
/// take the places drivers and operators need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketKind {
    Driver,
    TripStream,
    Operator,
}

/// How many sockets of each kind may be open, and how many trip streams one account may
/// hold.
pub struct Budgets {
    drivers: Arc<Semaphore>,
    trip_streams: Arc<Semaphore>,
    operators: Arc<Semaphore>,
    /// Trip streams open per account. A std `Mutex`: one map operation per open/close.
    streams_per_account: Mutex<HashMap<String, u64>>,
    max_streams_per_account: u64,
    messages_per_s: f64,
}

/// A socket's place in its budget, given back when the socket closes.
pub struct SocketPermit {
    _place: OwnedSemaphorePermit,
    account: Option<(Arc<Budgets>, String)>,
}

impl Drop for SocketPermit {
    fn drop(&mut self) {
        if let Some((budgets, account)) = self.account.take() {
            let mut open = budgets.streams_per_account.lock().unwrap();
            if let Some(count) = open.get_mut(&account) {
                *count -= 1;
                if *count == 0 {
                    open.remove(&account);
                }
            }
        }
    }
}

impl Budgets {
    pub fn new(limits: &LimitsConfig) -> Budgets {
        Budgets {
            drivers: Arc::new(Semaphore::new(limits.max_driver_sockets)),
            trip_streams: Arc::new(Semaphore::new(limits.max_trip_streams)),
            operators: Arc::new(Semaphore::new(limits.max_operator_streams)),
            streams_per_account: Mutex::default(),
            max_streams_per_account: limits.max_streams_per_account,
            messages_per_s: f64::from(limits.socket_messages_per_s),
        }
    }

    /// The frame budget of a socket opening now (`HAIL_SOCKET_MESSAGES_PER_S`).
    pub fn frames(&self, now: Instant) -> FrameBudget {
        FrameBudget::new(now, self.messages_per_s)
    }

    /// Frames one socket may send a second, sustained.
    pub fn messages_per_s(&self) -> f64 {
        self.messages_per_s
    }

    /// A place for a socket of `kind` opened by `account`: 503 if the kind's budget is
    /// spent, 429 `too_many_sockets` if the account holds its share of trip streams.
    pub fn take(
        self: &Arc<Self>,
        kind: SocketKind,
        account: &str,
    ) -> Result<SocketPermit, ApiError> {
        let budget = match kind {
            SocketKind::Driver => &self.drivers,
            SocketKind::TripStream => &self.trip_streams,
            SocketKind::Operator => &self.operators,
        };
        let place = budget.clone().try_acquire_owned().map_err(|_| {
            ApiError::unavailable("too many open sockets of this kind; retry later")
        })?;
        if kind != SocketKind::TripStream {
            return Ok(SocketPermit {
                _place: place,
                account: None,
            });
        }
        let mut open = self.streams_per_account.lock().unwrap();
        let count = open.entry(account.to_string()).or_default();
        if *count >= self.max_streams_per_account {
            return Err(ApiError::new(
                ErrorCode::TooManySockets,
                format!(
                    "at most {} open trip streams per account; close one first",
                    self.max_streams_per_account
                ),
            ));
        }
        *count += 1;
        Ok(SocketPermit {
            _place: place,
            account: Some((self.clone(), account.to_string())),
        })
    }
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

/// Rate-limited frames a socket may send in its life before it is closed with 1008.
pub const MAX_VIOLATIONS: u32 = 100;

/// What becomes of a frame a client sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Allowed,
    /// Over the budget: dropped (a driver socket says so with `rate_limited`).
    Dropped,
    /// Over the budget too often: close the socket (1008, policy violation).
    Close,
}

/// Every frame a client sends — text, binary, ping or pong — counts against one budget,
/// on every kind of socket: a client that keeps the server busy with frames it ignores is
/// throttled, and one that keeps at it is disconnected.
pub struct FrameBudget {
    budget: MessageBudget,
    violations: u32,
}

impl FrameBudget {
    /// `rate` frames a second, sustained; bursts of twice that.
    pub fn new(now: Instant, rate: f64) -> FrameBudget {
        FrameBudget {
            budget: MessageBudget::new(now, rate),
            violations: 0,
        }
    }

    pub fn admit(&mut self, now: Instant) -> Admission {
        if self.budget.take(now) {
            return Admission::Allowed;
        }
        self.violations += 1;
        if self.violations > MAX_VIOLATIONS {
            Admission::Close
        } else {
            Admission::Dropped
        }
    }
}

/// Whether a read failed because a frame or message was over the size limit (answered
/// with a 1009 close frame, as RFC 6455 asks, before the connection goes).
pub fn too_big(error: &axum::Error) -> bool {
    use std::error::Error;
    let mut source: Option<&(dyn Error + 'static)> = error.source();
    while let Some(cause) = source {
        if let Some(tokio_tungstenite::tungstenite::Error::Capacity(_)) =
            cause.downcast_ref::<tokio_tungstenite::tungstenite::Error>()
        {
            return true;
        }
        source = cause.source();
    }
    false
}

pub fn close_too_big() -> Message {
    close(axum::extract::ws::close_code::SIZE, "frame too large")
}

pub fn close_policy() -> Message {
    close(axum::extract::ws::close_code::POLICY, "too many messages")
}

/// A token bucket: a misbehaving client cannot make the server do unbounded work.
pub struct MessageBudget {
    tokens: f64,
    refilled: Instant,
    /// Tokens earned a second, and the most held (a burst).
    rate: f64,
    burst: f64,
}

impl MessageBudget {
    /// `rate` messages a second, sustained; bursts of twice that.
    pub fn new(now: Instant, rate: f64) -> MessageBudget {
        MessageBudget {
            tokens: 2.0 * rate,
            refilled: now,
            rate,
            burst: 2.0 * rate,
        }
    }

    pub fn take(&mut self, now: Instant) -> bool {
        let earned = now.saturating_duration_since(self.refilled).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + earned).min(self.burst);
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
    fn a_websocket_key_is_sixteen_bytes_in_base64() {
        for key in [
            "dGhlIHNhbXBsZSBub25jZQ==",
            "AAAAAAAAAAAAAAAAAAAAAA==",
            "+/+/+/+/+/+/+/+/+/+/+w==",
        ] {
            assert!(valid_websocket_key(key.as_bytes()), "{key}");
        }
        for key in [
            "",
            "dGhlIHNhbXBsZSBub25jZQ",
            "dGhlIHNhbXBsZSBub25jZR==",
            "dGhlIHNhbXBsZSBub25jZQ=",
            "dGhlIHNhbXBsZSBub25jZQ===",
            "dGhlIHNhbXBsZSBub25j*Q==",
            "dGhlIHNhbXBsZSBub25jZQ==\n",
        ] {
            assert!(!valid_websocket_key(key.as_bytes()), "{key}");
        }
    }

    /// The default `HAIL_SOCKET_MESSAGES_PER_S`, and its burst.
    const MESSAGES_PER_SECOND: f64 = 10.0;
    const MESSAGE_BURST: f64 = 20.0;

    #[test]
    fn a_flood_is_dropped_then_closed() {
        let start = Instant::now();
        let mut budget = FrameBudget::new(start, MESSAGES_PER_SECOND);
        let admitted: Vec<Admission> = (0..200).map(|_| budget.admit(start)).collect();
        assert_eq!(
            admitted
                .iter()
                .filter(|a| **a == Admission::Allowed)
                .count(),
            MESSAGE_BURST as usize
        );
        assert_eq!(admitted[MESSAGE_BURST as usize], Admission::Dropped);
        assert_eq!(
            admitted.iter().position(|a| *a == Admission::Close),
            Some(MESSAGE_BURST as usize + MAX_VIOLATIONS as usize)
        );
    }

    #[test]
    fn the_message_budget_allows_a_burst_then_the_sustained_rate() {
        // The default, and a budget lifted for an ingest benchmark.
        for rate in [MESSAGES_PER_SECOND, 100.0] {
            let start = Instant::now();
            let mut budget = MessageBudget::new(start, rate);
            let burst = (0..1_000).filter(|_| budget.take(start)).count();
            assert_eq!(burst, 2 * rate as usize, "{rate}/s");
            let one_token = Duration::from_secs_f64(1.0 / rate);
            assert!(!budget.take(start + one_token / 2), "{rate}/s");
            assert!(budget.take(start + one_token), "{rate}/s");
            let a_second_later = start + one_token + Duration::from_secs(1);
            let sustained = (0..1_000).filter(|_| budget.take(a_second_later)).count();
            assert_eq!(sustained, rate as usize, "{rate}/s");
        }
    }
}
