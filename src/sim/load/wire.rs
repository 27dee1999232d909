//! The wire side of `hail load`: the upgrade request, and each socket's pings built once
//! as masked JSON text frames (tungstenite's `Frame`) and written as they are; what the
//! server sends is read with tungstenite's `FrameHeader` only far enough to count it.

use std::{
    io::Cursor,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use rand::{RngExt, rngs::StdRng};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
};

use tokio_tungstenite::tungstenite::protocol::frame::{
    Frame, FrameHeader,
    coding::{Data, OpCode},
};

use crate::protocol::DriverMessage;

/// Distinct positions in each driver's path (out and back, so the path has no jump).
const PATH_STEPS: usize = 20;
/// Metres a driver moves between pings: 10 m/s at 10 pings a second.
const STEP_M: f64 = 1.0;

pub(super) fn handshake(host_port: &str, token: &str) -> Vec<u8> {
    format!(
        "GET /v1/driver/ws?token={token} HTTP/1.1\r\nHost: {host_port}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes()
}

/// Opens the socket: TCP, the upgrade, and `{"type":"status","status":"available"}`.
/// Returns the stream and any bytes read past the handshake's answer.
pub(super) async fn connect(
    address: SocketAddr,
    source: Option<IpAddr>,
    request: &[u8],
) -> anyhow::Result<(TcpStream, Vec<u8>)> {
    let mut last = None;
    for attempt in 0..5u64 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
        }
        match tokio::time::timeout(Duration::from_secs(10), open(address, source, request)).await {
            Ok(Ok(socket)) => return Ok(socket),
            Ok(Err(error)) => last = Some(error),
            Err(_) => last = Some(anyhow::anyhow!("handshake timed out")),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no attempt")))
}

async fn open(
    address: SocketAddr,
    source: Option<IpAddr>,
    request: &[u8],
) -> anyhow::Result<(TcpStream, Vec<u8>)> {
    let socket = TcpSocket::new_v4()?;
    if let Some(source) = source {
        socket.bind(SocketAddr::new(source, 0))?;
    }
    let mut stream = socket.connect(address).await?;
    stream.set_nodelay(true)?;
    stream.write_all(request).await?;
    let mut answer = Vec::with_capacity(512);
    let end = loop {
        let mut chunk = [0u8; 512];
        let n = stream.read(&mut chunk).await?;
        anyhow::ensure!(n > 0, "closed during the handshake");
        answer.extend_from_slice(&chunk[..n]);
        if let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        anyhow::ensure!(answer.len() < 8192, "handshake answer too long");
    };
    anyhow::ensure!(
        answer.starts_with(b"HTTP/1.1 101"),
        "upgrade refused: {}",
        String::from_utf8_lossy(&answer[..end])
            .lines()
            .next()
            .unwrap_or("")
    );
    let status = serde_json::to_vec(&DriverMessage::Status {
        status: crate::fleet::DriverStatus::Available,
    })?;
    stream.write_all(&masked_text(status, [7, 3, 1, 9])).await?;
    Ok((stream, answer.split_off(end)))
}

/// A client's text frame (FIN set, masked with `mask`), as it goes on the wire.
fn masked_text(payload: Vec<u8>, mask: [u8; 4]) -> Vec<u8> {
    let mut frame = Frame::message(payload, OpCode::Data(Data::Text), true);
    frame.header_mut().mask = Some(mask);
    let mut bytes = Vec::with_capacity(frame.len());
    frame
        .format(&mut bytes)
        .expect("writing a frame to a Vec cannot fail");
    bytes
}

/// One driver's writes: its path out and back in steps of [`STEP_M`], as location
/// frames, `burst` to a write.
pub(super) fn driver_frames(rng: &mut StdRng, burst: usize, index: u32) -> Vec<Vec<u8>> {
    let start = super::random_point_in_seoul(rng);
    let heading = rng.random_range(0.0..360.0);
    let mask = index.wrapping_mul(2_654_435_761).to_be_bytes();
    let steps = PATH_STEPS.div_ceil(burst) * burst;
    let frames: Vec<Vec<u8>> = (0..steps)
        .map(|step| {
            let out = step.min(steps - step) as f64;
            let position = start.destination(heading, out * STEP_M);
            let json = serde_json::to_vec(&DriverMessage::location(position))
                .expect("driver messages serialize");
            masked_text(json, mask)
        })
        .collect();
    frames.chunks(burst).map(|chunk| chunk.concat()).collect()
}

/// The first whole server frame (unmasked) in `bytes`: its opcode, payload and length.
pub(super) fn server_frame(bytes: &[u8]) -> Option<(u8, &[u8], usize)> {
    let mut cursor = Cursor::new(bytes);
    let (header, len) = FrameHeader::parse(&mut cursor).ok()??;
    let start = cursor.position() as usize;
    let end = start.checked_add(usize::try_from(len).ok()?)?;
    Some((u8::from(header.opcode), bytes.get(start..end)?, end))
}

pub(super) fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn frames_are_masked_text_of_the_right_length() {
        let mut rng = StdRng::seed_from_u64(1);
        let writes = driver_frames(&mut rng, 10, 3);
        assert_eq!(writes.len(), 2);
        // A short client frame: 2 header bytes, a 4-byte mask, the payload.
        let one = 6 + (writes[0][1] & 0x7f) as usize;
        assert_eq!(writes[0][0], 0x81);
        let mask: [u8; 4] = writes[0][2..6].try_into().unwrap();
        let json: Vec<u8> = writes[0][6..one]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i % 4])
            .collect();
        let message: DriverMessage = serde_json::from_slice(&json).unwrap();
        assert!(matches!(message, DriverMessage::Location { .. }));
    }

    #[test]
    fn server_frames_are_read_only_when_whole() {
        assert_eq!(server_frame(&[0x89, 0x02, b'h']), None);
        assert_eq!(
            server_frame(&[0x89, 0x02, b'h', b'i', 0x81]),
            Some((0x9, &b"hi"[..], 4))
        );
        assert_eq!(server_frame(&[0x81, 127, 0xff]), None);
    }
}
