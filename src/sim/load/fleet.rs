//! The sockets of `hail load` and `hail peak`: every driver's socket opened, pinged by a
//! few pacer tasks from frames built before the run, and read by a task of its own only
//! far enough to count what the server sends — and, for `hail peak`, to hand its offers on.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use rand::{SeedableRng, rngs::StdRng};
use tokio::{
    net::TcpStream,
    sync::{Semaphore, mpsc, watch},
    task::JoinSet,
    time::{Instant, MissedTickBehavior},
};

use super::wire::{connect, contains, driver_frames, handshake, server_frame};

/// Sockets per 127.0.0.x source address, so ephemeral ports never run out.
const SOCKETS_PER_SOURCE: usize = 10_000;
/// Tasks writing the pings, each to its share of the sockets.
const PACERS: usize = 2;
/// Handshakes under way at once.
const CONNECTING: usize = 256;

#[derive(Default)]
pub(in crate::sim) struct Counters {
    pub connected: AtomicU64,
    pub connect_failures: AtomicU64,
    pub frames_sent: AtomicU64,
    pub rate_limited: AtomicU64,
    pub error_replies: AtomicU64,
    pub offers: AtomicU64,
    pub other_messages: AtomicU64,
    pub server_pings: AtomicU64,
    pub writes_skipped: AtomicU64,
    pub dropped: AtomicU64,
}

pub(in crate::sim) fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

pub(in crate::sim) fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// An offer frame as it came off driver `driver`'s socket (the index into the tokens the
/// fleet was opened with), `at` the moment it was read.
pub(in crate::sim) struct OfferFrame {
    pub driver: usize,
    pub at: Instant,
    pub json: Vec<u8>,
}

/// How the fleet pings: `rate` pings a second per socket, `burst` frames to a write.
pub(in crate::sim) struct Pinging {
    pub rate: f64,
    pub burst: usize,
    pub seed: u64,
}

/// Every driver socket, pinging until [`Fleet::stop`].
pub(in crate::sim) struct Fleet {
    pub counters: Arc<Counters>,
    stop: watch::Sender<bool>,
    pacers: JoinSet<()>,
    readers: JoinSet<()>,
}

impl Fleet {
    /// Opens one socket per token (each goes online with `status: available`), then starts
    /// pinging. Sockets that cannot be opened are counted, not fatal. With `offers`, every
    /// offer frame a socket receives is passed on there.
    pub async fn open(
        address: SocketAddr,
        host_port: &str,
        tokens: &[String],
        pinging: &Pinging,
        offers: Option<mpsc::Sender<OfferFrame>>,
    ) -> Fleet {
        let counters = Arc::new(Counters::default());
        let connecting = Arc::new(Semaphore::new(CONNECTING));
        let mut sockets = JoinSet::new();
        let mut rng = StdRng::seed_from_u64(pinging.seed);
        for (index, token) in tokens.iter().enumerate() {
            let writes = driver_frames(&mut rng, pinging.burst, index as u32);
            let request = handshake(host_port, token);
            let source = IpAddr::V4(Ipv4Addr::new(
                127,
                0,
                0,
                2 + (index / SOCKETS_PER_SOURCE) as u8,
            ));
            let (counters, connecting) = (counters.clone(), connecting.clone());
            sockets.spawn(async move {
                let _permit = connecting.acquire().await;
                let source = address.ip().is_loopback().then_some(source);
                match connect(address, source, &request).await {
                    Ok((stream, leftover)) => {
                        add(&counters.connected, 1);
                        Some((index, stream, leftover, writes))
                    }
                    Err(_) => {
                        add(&counters.connect_failures, 1);
                        None
                    }
                }
            });
        }
        let (stop, _) = watch::channel(false);
        let mut readers = JoinSet::new();
        let mut drivers = Vec::with_capacity(tokens.len());
        while let Some(socket) = sockets.join_next().await {
            let Ok(Some((index, stream, leftover, writes))) = socket else {
                continue;
            };
            let socket = Arc::new(Socket {
                stream,
                pong_due: AtomicBool::new(false),
                closed: AtomicBool::new(false),
            });
            let (counters, mut stop) = (counters.clone(), stop.subscribe());
            let reading = socket.clone();
            let offers = offers.clone().map(|sink| (index, sink));
            readers.spawn(async move {
                read(&reading, leftover, &counters, offers, &mut stop).await;
            });
            drivers.push(Driver {
                socket,
                writes,
                next: 0,
                unsent: Vec::new(),
            });
        }
        // Each pacer writes to its share of the sockets in turn, evenly spread over a period.
        let period = Duration::from_secs_f64(pinging.burst as f64 / pinging.rate);
        let per_pacer = drivers.len().div_ceil(PACERS).max(1);
        let mut pacers = JoinSet::new();
        let go = Instant::now();
        while !drivers.is_empty() {
            let share: Vec<Driver> = drivers.drain(..per_pacer.min(drivers.len())).collect();
            let (counters, stop) = (counters.clone(), stop.subscribe());
            let burst = pinging.burst as u64;
            pacers.spawn(async move { pace(share, go, period, burst, &counters, stop).await });
        }
        Fleet {
            counters,
            stop,
            pacers,
            readers,
        }
    }

    /// Stops pinging and reading; the sockets close as their tasks end.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        while self.pacers.join_next().await.is_some() {}
        while self.readers.join_next().await.is_some() {}
    }
}

/// One open driver socket, shared by its reader and its pacer.
struct Socket {
    stream: TcpStream,
    /// The server pinged: the pacer sends the pong with its next write.
    pong_due: AtomicBool,
    closed: AtomicBool,
}

/// What a pacer keeps for one socket.
struct Driver {
    socket: Arc<Socket>,
    writes: Vec<Vec<u8>>,
    next: usize,
    /// The rest of a write the kernel took only part of, sent before anything else.
    unsent: Vec<u8>,
}

/// A client's pong (empty, masked), answering the server's empty keepalive ping.
const PONG: [u8; 6] = [0x8A, 0x80, 1, 2, 3, 4];
/// Writes to `drivers` in turn so each is written once a `period`, evenly spread: by
/// time `t` after `go`, write number `t × n / period` is due. Never early, so a socket
/// never exceeds its rate however late the pacer runs (a late pacer catches up, within
/// the server's burst, which filled while it was late). Writes never wait: a socket the
/// kernel will not take more from now is skipped this time (counted).
async fn pace(
    mut drivers: Vec<Driver>,
    go: Instant,
    period: Duration,
    burst: u64,
    counters: &Counters,
    mut stop: watch::Receiver<bool>,
) {
    let n = drivers.len() as u128;
    let mut done: u128 = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let due = go.elapsed().as_nanos() * n / period.as_nanos().max(1);
        // A pacer behind its schedule still lets the other tasks run (the readers, the
        // clock of the measurement) every so many writes.
        let mut batch = 0;
        while done < due {
            batch += 1;
            if batch % 512 == 0 {
                tokio::task::yield_now().await;
            }
            let driver = &mut drivers[(done % n) as usize];
            done += 1;
            if driver.socket.closed.load(Ordering::Relaxed) {
                continue;
            }
            if driver.socket.pong_due.swap(false, Ordering::Relaxed) {
                driver.unsent.extend_from_slice(&PONG);
            }
            if !driver.unsent.is_empty() {
                if let Ok(written) = driver.socket.stream.try_write(&driver.unsent) {
                    driver.unsent.drain(..written);
                }
                if !driver.unsent.is_empty() {
                    add(&counters.writes_skipped, 1);
                    continue;
                }
            }
            let write = &driver.writes[driver.next];
            driver.next = (driver.next + 1) % driver.writes.len();
            match driver.socket.stream.try_write(write) {
                Ok(written) => {
                    driver.unsent.extend_from_slice(&write[written..]);
                    add(&counters.frames_sent, burst);
                }
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                    add(&counters.writes_skipped, 1);
                }
                Err(_) => {
                    driver.socket.closed.store(true, Ordering::Relaxed);
                }
            }
        }
    }
}

/// Reads what the server sends on one socket until it closes or the run stops: counts
/// error replies, notes pings to answer, passes offers on (when asked to) with the moment
/// they were read.
async fn read(
    socket: &Socket,
    mut read: Vec<u8>,
    counters: &Counters,
    offers: Option<(usize, mpsc::Sender<OfferFrame>)>,
    stop: &mut watch::Receiver<bool>,
) {
    let mut chunk = [0u8; 1024];
    loop {
        while let Some((opcode, payload, used)) = server_frame(&read) {
            match opcode {
                0x1 if contains(payload, b"\"rate_limited\"") => add(&counters.rate_limited, 1),
                0x1 if contains(payload, b"\"type\":\"error\"") => add(&counters.error_replies, 1),
                // `"offer"` with its closing quote: not `"offer_withdrawn"`.
                0x1 if contains(payload, b"\"type\":\"offer\"") => {
                    add(&counters.offers, 1);
                    if let Some((driver, sink)) = &offers {
                        let at = Instant::now();
                        let json = payload.to_vec();
                        // Bounded: a consumer that falls behind slows this socket's
                        // reading, which the report's latencies then show.
                        let _ = sink
                            .send(OfferFrame {
                                driver: *driver,
                                at,
                                json,
                            })
                            .await;
                    }
                }
                0x1 => add(&counters.other_messages, 1),
                0x8 => {
                    socket.closed.store(true, Ordering::Relaxed);
                    add(&counters.dropped, 1);
                    return;
                }
                0x9 => {
                    add(&counters.server_pings, 1);
                    socket.pong_due.store(true, Ordering::Relaxed);
                }
                _ => {}
            }
            read.drain(..used);
        }
        tokio::select! {
            ready = socket.stream.readable() => if ready.is_err() {
                socket.closed.store(true, Ordering::Relaxed);
                add(&counters.dropped, 1);
                return;
            },
            _ = stop.changed() => return,
        }
        match socket.stream.try_read(&mut chunk) {
            Ok(n) if n > 0 => read.extend_from_slice(&chunk[..n]),
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
            _ => {
                socket.closed.store(true, Ordering::Relaxed);
                add(&counters.dropped, 1);
                return;
            }
        }
    }
}
