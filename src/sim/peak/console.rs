//! An operator console's stream kept open through a `hail peak` run: `/v1/ops/ws` read as
//! fast as the server sends it (a snapshot, then moved drivers twice a second, trip
//! events, offers and figures), counted by type. A drop is an error, and the console
//! reconnects as the browser's would.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use futures_util::StreamExt;
use serde::Serialize;
use tokio::{sync::watch, task::JoinHandle};
use tokio_tungstenite::tungstenite::Message;

use super::trips::Errors;

/// A dropped console waits this long before it connects again.
const RECONNECT_AFTER: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Default, Serialize)]
pub struct ConsoleReport {
    pub connections: u64,
    pub messages: u64,
    pub bytes: u64,
    /// Messages by their `type` (snapshot, drivers, trip_event, offer, figures, …).
    pub by_type: BTreeMap<String, u64>,
}

pub(super) struct Console {
    stop: watch::Sender<bool>,
    task: JoinHandle<ConsoleReport>,
}

impl Console {
    /// Connects to `url` (a `ws://` address with the operator's token) and reads it
    /// until [`Console::close`].
    pub fn open(url: String, errors: Arc<Errors>) -> Console {
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(read(url, errors, stopped));
        Console { stop, task }
    }

    pub async fn close(self) -> ConsoleReport {
        let _ = self.stop.send(true);
        self.task.await.unwrap_or_default()
    }
}

async fn read(url: String, errors: Arc<Errors>, mut stop: watch::Receiver<bool>) -> ConsoleReport {
    let mut report = ConsoleReport::default();
    while !*stop.borrow() {
        let connected = tokio::select! {
            connected = tokio_tungstenite::connect_async(url.as_str()) => connected,
            _ = stop.changed() => break,
        };
        let mut socket = match connected {
            Ok((socket, _)) => socket,
            Err(error) => {
                errors.note(format!("console: connect failed ({})", kind(&error)));
                tokio::time::sleep(RECONNECT_AFTER).await;
                continue;
            }
        };
        report.connections += 1;
        loop {
            let frame = tokio::select! {
                frame = socket.next() => frame,
                _ = stop.changed() => {
                    let _ = socket.close(None).await;
                    return report;
                }
            };
            match frame {
                Some(Ok(Message::Text(text))) => {
                    report.messages += 1;
                    report.bytes += text.len() as u64;
                    *report.by_type.entry(message_type(&text)).or_default() += 1;
                }
                // Pings are answered by tungstenite as it reads.
                Some(Ok(Message::Close(_))) | None => {
                    errors.note("console: closed by the server");
                    break;
                }
                Some(Ok(_)) => {}
                Some(Err(error)) => {
                    errors.note(format!("console: dropped ({})", kind(&error)));
                    break;
                }
            }
        }
        tokio::time::sleep(RECONNECT_AFTER).await;
    }
    report
}

/// The `type` tag, which serde writes first.
fn message_type(text: &str) -> String {
    text.strip_prefix("{\"type\":\"")
        .and_then(|rest| rest.split('"').next())
        .unwrap_or("untyped")
        .to_string()
}

fn kind(error: &tokio_tungstenite::tungstenite::Error) -> String {
    use tokio_tungstenite::tungstenite::Error;
    match error {
        Error::Http(response) => format!("HTTP {}", response.status().as_u16()),
        Error::Io(error) => format!("{:?}", error.kind()),
        Error::Capacity(_) => "message too large".into(),
        Error::Protocol(_) => "protocol error".into(),
        _ => "other".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_counted_by_their_tag() {
        assert_eq!(
            message_type(r#"{"type":"drivers","drivers":[]}"#),
            "drivers"
        );
        assert_eq!(message_type(r#"{"drivers":[]}"#), "untyped");
    }
}
