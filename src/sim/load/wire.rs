//! The wire side of `hail load`: a WebSocket client's handshake and frames, by hand.
//! Each socket's pings are built once (masked JSON text frames) and written as they are;
//! what the server sends is framed only far enough to count it.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use rand::{RngExt, rngs::StdRng};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
};

use crate::{geometry::LatLng, protocol::DriverMessage};

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
    stream
        .write_all(&masked_frame(0x1, &status, [7, 3, 1, 9]))
        .await?;
    Ok((stream, answer.split_off(end)))
}

/// A client frame (FIN set, masked), payload under 64 KiB.
fn masked_frame(opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(payload.len() + 8);
    frame.push(0x80 | opcode);
    if payload.len() < 126 {
        frame.push(0x80 | payload.len() as u8);
    } else {
        frame.push(0x80 | 126);
        frame.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// One driver's writes: its path out and back in steps of [`STEP_M`], as location
/// frames, `burst` to a write.
pub(super) fn driver_frames(rng: &mut StdRng, burst: usize, index: u32) -> Vec<Vec<u8>> {
    let start = LatLng::new(
        rng.random_range(37.45..37.70),
        rng.random_range(126.80..127.18),
    )
    .expect("inside Seoul");
    let heading = rng.random_range(0.0..360.0);
    let mask = index.wrapping_mul(2_654_435_761).to_be_bytes();
    let steps = PATH_STEPS.div_ceil(burst) * burst;
    let frames: Vec<Vec<u8>> = (0..steps)
        .map(|step| {
            let out = step.min(steps - step) as f64;
            let position = start.destination(heading, out * STEP_M);
            let json = serde_json::to_vec(&DriverMessage::location(position))
                .expect("driver messages serialize");
            masked_frame(0x1, &json, mask)
        })
        .collect();
    frames.chunks(burst).map(|chunk| chunk.concat()).collect()
}

/// The first whole server frame (unmasked) in `bytes`: its opcode, payload and length.
pub(super) fn server_frame(bytes: &[u8]) -> Option<(u8, &[u8], usize)> {
    let (&first, &second) = (bytes.first()?, bytes.get(1)?);
    let (len, header): (usize, usize) = match second & 0x7f {
        126 => (
            u16::from_be_bytes([*bytes.get(2)?, *bytes.get(3)?]) as usize,
            4,
        ),
        127 => (
            u64::from_be_bytes(bytes.get(2..10)?.try_into().ok()?) as usize,
            10,
        ),
        len => (len as usize, 2),
    };
    let payload = bytes.get(header..header.checked_add(len)?)?;
    Some((first & 0x0f, payload, header + len))
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
