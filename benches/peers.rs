//! hail's fleet index side by side with its peers, Redis GEO and PostGIS, on one seeded
//! fleet (issue 14). Run through `benches/peers.sh`, which starts throwaway Redis and
//! PostgreSQL servers on free ports and passes them here; alone it measures hail only:
//!
//! `cargo bench --bench peers -- [--quick] [--drivers N] [--redis-port P] [--pg-port P]`
//!
//! One dataset (seeded): drivers at random positions over Seoul, query points, and 40 m
//! moves (a driver and its new position 40 m away in a random direction), written to
//! `target/peers/` as CSV. Each side loads the same fleet and answers the same operations:
//!
//! - nearest 8 available within 3 km: hail `Fleet::nearest_available`; Redis `GEOSEARCH …
//!   BYRADIUS 3 km ASC COUNT 8`; PostGIS KNN `ORDER BY geog <-> point LIMIT 8` under
//!   `ST_DWithin(geog, point, 3000)` on geography with a GiST index.
//! - move one driver 40 m: hail `Fleet::ping`; Redis `GEOADD` of the one member; PostGIS
//!   `UPDATE … WHERE id = $1`.
//! - bulk load: hail `connect` + `ping` per driver through the public API; Redis pipelined
//!   `GEOADD`s of 1,000 members; PostGIS `COPY` + GiST index build + `ANALYZE`.
//!
//! hail is in process and single-threaded (the dispatcher calls the index that way, behind
//! its uncontended mutex); the peers are networked servers on loopback TCP, measured with
//! one client (latency) and with several concurrent clients (throughput), each client a
//! thread with its own connection. The clients are Rust (a small RESP client here, sqlx
//! for PostgreSQL) so client overhead stays small, but it is included, and the clients
//! share the machine's cores with the server.

use std::{
    collections::HashSet,
    fmt::Write as _,
    fs,
    io::{self, BufRead, BufReader, BufWriter, Read, Write},
    net::TcpStream,
    path::PathBuf,
    sync::{Arc, Barrier},
    thread,
    time::{Duration, Instant as StdInstant},
};

use hail::{
    fleet::{Fleet, FleetIndex},
    geometry::LatLng,
    trip::Timestamp,
};
use rand::{RngExt, SeedableRng, rngs::StdRng};
use sqlx::{Connection, Row, postgres::PgConnection};
use tokio::time::Instant;

const LAT: (f64, f64) = (37.45, 37.70);
const LNG: (f64, f64) = (126.80, 127.18);
const RADIUS_M: f64 = 3_000.0;
const K: usize = 8;
const MOVE_M: f64 = 40.0;
/// hail's operations are timed in batches (one clock read costs ~25 ns, a sizeable part of
/// a move): the per-operation figure of a batch is its mean.
const HAIL_BATCH: usize = 16;
/// Query results compared across the three.
const AGREEMENT_QUERIES: usize = 100;
const REDIS_KEY: &str = "drivers";
/// The first radius of the Redis client's growing search.
const GROWING_FROM_M: f64 = 200.0;

struct Args {
    drivers: usize,
    queries: usize,
    moves: usize,
    seed: u64,
    out: PathBuf,
    redis_port: Option<u16>,
    pg_port: Option<u16>,
    /// Longest a measured phase runs (the op lists are usually longer than a peer gets
    /// through in this time).
    phase: Duration,
    redis_search_clients: usize,
    redis_move_clients: usize,
    pg_clients: usize,
}

impl Args {
    fn parse() -> Args {
        let mut args = Args {
            drivers: 250_000,
            queries: 20_000,
            moves: 200_000,
            seed: 42,
            out: PathBuf::from("target/peers"),
            redis_port: None,
            pg_port: None,
            phase: Duration::from_secs(8),
            redis_search_clients: 10,
            redis_move_clients: 50,
            pg_clients: 4,
        };
        let mut drivers = None;
        let mut it = std::env::args().skip(1);
        while let Some(arg) = it.next() {
            let mut value = |name: &str| {
                it.next()
                    .unwrap_or_else(|| panic!("{name} needs a value"))
                    .parse::<u64>()
                    .unwrap_or_else(|_| panic!("{name} takes a number"))
            };
            match arg.as_str() {
                "--quick" => {
                    args.drivers = 25_000;
                    args.queries = 5_000;
                    args.moves = 50_000;
                    args.phase = Duration::from_secs(2);
                }
                "--drivers" => drivers = Some(value("--drivers") as usize),
                "--seed" => args.seed = value("--seed"),
                "--redis-port" => args.redis_port = Some(value("--redis-port") as u16),
                "--pg-port" => args.pg_port = Some(value("--pg-port") as u16),
                "--phase-secs" => args.phase = Duration::from_secs(value("--phase-secs")),
                "--redis-search-clients" => {
                    args.redis_search_clients = value("--redis-search-clients") as usize
                }
                "--redis-move-clients" => {
                    args.redis_move_clients = value("--redis-move-clients") as usize
                }
                "--pg-clients" => args.pg_clients = value("--pg-clients") as usize,
                "--out" => args.out = PathBuf::from(it.next().expect("--out needs a value")),
                // cargo bench passes --bench to harness = false targets.
                "--bench" => {}
                other => panic!("unknown argument {other}"),
            }
        }
        if let Some(drivers) = drivers {
            args.drivers = drivers;
        }
        args
    }
}

// ---------------------------------------------------------------------------------------
// The dataset

struct Dataset {
    ids: Vec<String>,
    drivers: Vec<LatLng>,
    queries: Vec<LatLng>,
    /// (driver, its new position 40 m from where the previous moves left it)
    moves: Vec<(u32, LatLng)>,
}

fn random_point(rng: &mut StdRng) -> LatLng {
    LatLng::new(
        rng.random_range(LAT.0..LAT.1),
        rng.random_range(LNG.0..LNG.1),
    )
    .expect("inside Seoul")
}

impl Dataset {
    fn generate(args: &Args) -> Dataset {
        let mut rng = StdRng::seed_from_u64(args.seed);
        let ids = (0..args.drivers).map(|i| format!("drv_{i}")).collect();
        let drivers: Vec<LatLng> = (0..args.drivers).map(|_| random_point(&mut rng)).collect();
        let queries = (0..args.queries).map(|_| random_point(&mut rng)).collect();
        let mut at = drivers.clone();
        let moves = (0..args.moves)
            .map(|_| {
                let driver = rng.random_range(0..args.drivers);
                at[driver] = at[driver].destination(rng.random_range(0.0..360.0), MOVE_M);
                (driver as u32, at[driver])
            })
            .collect();
        Dataset {
            ids,
            drivers,
            queries,
            moves,
        }
    }

    fn write(&self, args: &Args) -> io::Result<PathBuf> {
        let dir = args.out.join(format!("seed{}-{}", args.seed, args.drivers));
        fs::create_dir_all(&dir)?;
        let mut file = BufWriter::new(fs::File::create(dir.join("drivers.csv"))?);
        writeln!(file, "id,lat,lng")?;
        for (id, p) in self.ids.iter().zip(&self.drivers) {
            writeln!(file, "{id},{},{}", p.lat(), p.lng())?;
        }
        file.flush()?;
        let mut file = BufWriter::new(fs::File::create(dir.join("queries.csv"))?);
        writeln!(file, "lat,lng")?;
        for p in &self.queries {
            writeln!(file, "{},{}", p.lat(), p.lng())?;
        }
        file.flush()?;
        let mut file = BufWriter::new(fs::File::create(dir.join("moves.csv"))?);
        writeln!(file, "id,lat,lng")?;
        for (driver, p) in &self.moves {
            writeln!(
                file,
                "{},{},{}",
                self.ids[*driver as usize],
                p.lat(),
                p.lng()
            )?;
        }
        file.flush()?;
        Ok(dir)
    }
}

// ---------------------------------------------------------------------------------------
// Measurements

/// One measured phase: per-operation latencies (ns) and the wall time they took together.
#[derive(Default, Clone)]
struct Phase {
    latencies: Vec<u64>,
    elapsed: Duration,
    clients: usize,
}

impl Phase {
    fn percentile_us(&self, q: f64) -> f64 {
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        if sorted.is_empty() {
            return f64::NAN;
        }
        let rank = ((sorted.len() - 1) as f64 * q).round() as usize;
        sorted[rank] as f64 / 1_000.0
    }

    fn median_us(&self) -> f64 {
        self.percentile_us(0.5)
    }

    fn ops(&self) -> usize {
        self.latencies.len()
    }

    fn per_second(&self) -> f64 {
        self.ops() as f64 / self.elapsed.as_secs_f64()
    }
}

#[derive(Default)]
struct Side {
    name: &'static str,
    load: Duration,
    memory_bytes: Option<u64>,
    search_1: Phase,
    search_n: Option<Phase>,
    /// Redis only: the growing-radius search (1 client, N clients) and its answers.
    growing: Option<(Phase, Phase, Vec<Vec<String>>)>,
    move_1: Phase,
    move_n: Option<Phase>,
    /// The first [`AGREEMENT_QUERIES`] answers, before any move.
    answers: Vec<Vec<String>>,
}

/// A client of a peer: one connection, one operation at a time.
trait Client: Sized {
    fn search(&mut self, at: LatLng) -> Vec<String>;
    fn move_to(&mut self, id: &str, at: LatLng);
}

/// Runs `op` over `items` with `clients` threads, each with its own client and every
/// `clients`-th item; `warmup` items of each are not recorded. Stops at `deadline`.
fn run_clients<C: Client, T: Sync>(
    clients: usize,
    items: &[T],
    warmup: usize,
    deadline: Duration,
    connect: &(dyn Fn() -> C + Sync),
    op: &(dyn Fn(&mut C, &T) + Sync),
) -> Phase {
    let barrier = Arc::new(Barrier::new(clients));
    let results: Vec<(Vec<u64>, StdInstant, StdInstant)> = thread::scope(|scope| {
        let handles: Vec<_> = (0..clients)
            .map(|c| {
                let barrier = barrier.clone();
                scope.spawn(move || {
                    let mut client = connect();
                    let mut mine = items.iter().skip(c).step_by(clients);
                    for item in mine.by_ref().take(warmup) {
                        op(&mut client, item);
                    }
                    barrier.wait();
                    let start = StdInstant::now();
                    let mut latencies = Vec::new();
                    for item in mine {
                        let before = StdInstant::now();
                        op(&mut client, item);
                        let after = StdInstant::now();
                        latencies.push((after - before).as_nanos() as u64);
                        if after - start > deadline {
                            break;
                        }
                    }
                    (latencies, start, StdInstant::now())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("client thread"))
            .collect()
    });
    let start = results.iter().map(|r| r.1).min().expect("a client");
    let end = results.iter().map(|r| r.2).max().expect("a client");
    Phase {
        latencies: results.into_iter().flat_map(|r| r.0).collect(),
        elapsed: end - start,
        clients,
    }
}

// ---------------------------------------------------------------------------------------
// hail

fn rss_bytes() -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Times `count` operations in batches; each batch yields its mean per operation.
fn batched(count: usize, deadline: Duration, mut op: impl FnMut(usize)) -> Phase {
    let start = StdInstant::now();
    let mut latencies = Vec::with_capacity(count / HAIL_BATCH + 1);
    let mut done = 0;
    while done + HAIL_BATCH <= count && start.elapsed() < deadline {
        let before = StdInstant::now();
        for i in done..done + HAIL_BATCH {
            op(i);
        }
        let per_op = before.elapsed().as_nanos() as u64 / HAIL_BATCH as u64;
        latencies.extend(std::iter::repeat_n(per_op, HAIL_BATCH));
        done += HAIL_BATCH;
    }
    Phase {
        latencies,
        elapsed: start.elapsed(),
        clients: 1,
    }
}

fn hail_side(data: &Dataset, args: &Args) -> (Side, Side) {
    let now = Instant::now();
    let stale = Duration::from_secs(3_600);

    // Through the handle hail's dispatcher and sockets use: the index behind its mutex.
    let before = rss_bytes();
    let fleet = Fleet::new(stale, 70.0, false);
    let start = StdInstant::now();
    // Each driver's socket holds its key, as the server's do.
    let mut keys = Vec::with_capacity(data.ids.len());
    for (id, at) in data.ids.iter().zip(&data.drivers) {
        let key = fleet.connect(id, None, now);
        fleet.ping(&key, *at, None, now);
        keys.push(key);
    }
    let load = start.elapsed();
    // The keys are the sockets' (each holds its own), not the index's.
    let keys_bytes = keys.capacity() * std::mem::size_of::<hail::fleet::DriverKey>();
    let memory_bytes = before
        .zip(rss_bytes())
        .map(|(a, b)| b.saturating_sub(a).saturating_sub(keys_bytes as u64));
    let answers = data.queries[..AGREEMENT_QUERIES.min(data.queries.len())]
        .iter()
        .map(|q| {
            fleet
                .nearest_available(*q, RADIUS_M, K, now, |_| false)
                .into_iter()
                .map(|c| c.driver_id.to_string())
                .collect()
        })
        .collect();
    // Unlimited time: hail gets through its lists in well under a phase.
    let long = args.phase * 10;
    let search_1 = batched(data.queries.len(), long, |i| {
        std::hint::black_box(fleet.nearest_available(data.queries[i], RADIUS_M, K, now, |_| false));
    });
    let move_1 = batched(data.moves.len(), long, |i| {
        let (driver, at) = data.moves[i];
        std::hint::black_box(fleet.ping(&keys[driver as usize], at, None, now));
    });
    let handle = Side {
        name: "hail",
        load,
        memory_bytes,
        search_1,
        move_1,
        answers,
        ..Side::default()
    };
    drop(fleet);

    // The bare index, without the lock, for the record.
    let mut index = FleetIndex::new(stale);
    let start = StdInstant::now();
    keys.clear();
    for (id, at) in data.ids.iter().zip(&data.drivers) {
        let key = index.connect(id, None, now, Timestamp(0));
        index.ping(&key, *at, None, now);
        keys.push(key);
    }
    let load = start.elapsed();
    let search_1 = batched(data.queries.len(), long, |i| {
        std::hint::black_box(index.nearest_available(data.queries[i], RADIUS_M, K, now, |_| false));
    });
    let move_1 = batched(data.moves.len(), long, |i| {
        let (driver, at) = data.moves[i];
        std::hint::black_box(index.ping(&keys[driver as usize], at, None, now));
    });
    let bare = Side {
        name: "hail FleetIndex",
        load,
        search_1,
        move_1,
        ..Side::default()
    };
    (handle, bare)
}

// ---------------------------------------------------------------------------------------
// Redis: a minimal RESP2 client over one TCP connection

#[derive(Debug)]
enum Reply {
    Status,
    Integer(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

struct Redis {
    reader: BufReader<TcpStream>,
    writer: BufWriter<TcpStream>,
}

impl Redis {
    fn connect(port: u16) -> io::Result<Redis> {
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_nodelay(true)?;
        Ok(Redis {
            reader: BufReader::with_capacity(64 * 1024, stream.try_clone()?),
            writer: BufWriter::with_capacity(64 * 1024, stream),
        })
    }

    fn send(&mut self, args: &[&[u8]]) -> io::Result<()> {
        write!(self.writer, "*{}\r\n", args.len())?;
        for arg in args {
            write!(self.writer, "${}\r\n", arg.len())?;
            self.writer.write_all(arg)?;
            self.writer.write_all(b"\r\n")?;
        }
        Ok(())
    }

    fn read(&mut self) -> io::Result<Reply> {
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        let line = line.trim_end_matches(['\r', '\n']);
        let (kind, rest) = line.split_at(1.min(line.len()));
        let number = || {
            rest.parse::<i64>()
                .map_err(|_| io::Error::other(format!("bad RESP line {line:?}")))
        };
        match kind {
            "+" => Ok(Reply::Status),
            "-" => Err(io::Error::other(format!("redis: {rest}"))),
            ":" => Ok(Reply::Integer(number()?)),
            "$" => {
                let len = number()?;
                if len < 0 {
                    return Ok(Reply::Bulk(None));
                }
                let mut data = vec![0; len as usize + 2];
                self.reader.read_exact(&mut data)?;
                data.truncate(len as usize);
                Ok(Reply::Bulk(Some(data)))
            }
            "*" => {
                let len = number()?;
                if len < 0 {
                    return Ok(Reply::Array(None));
                }
                (0..len)
                    .map(|_| self.read())
                    .collect::<io::Result<Vec<_>>>()
                    .map(|items| Reply::Array(Some(items)))
            }
            _ => Err(io::Error::other(format!("bad RESP line {line:?}"))),
        }
    }

    fn call(&mut self, args: &[&[u8]]) -> io::Result<Reply> {
        self.send(args)?;
        self.writer.flush()?;
        self.read()
    }

    fn info_field(&mut self, section: &str, field: &str) -> Option<u64> {
        let Ok(Reply::Bulk(Some(text))) = self.call(&[b"INFO", section.as_bytes()]) else {
            return None;
        };
        String::from_utf8_lossy(&text)
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{field}:"))?.trim().parse().ok())
    }
}

impl Redis {
    /// The nearest 8 within `radius_m`.
    fn geosearch(&mut self, at: LatLng, radius_m: f64) -> Vec<String> {
        let (lng, lat) = (at.lng().to_string(), at.lat().to_string());
        let radius = radius_m.to_string();
        let reply = self
            .call(&[
                b"GEOSEARCH",
                REDIS_KEY.as_bytes(),
                b"FROMLONLAT",
                lng.as_bytes(),
                lat.as_bytes(),
                b"BYRADIUS",
                radius.as_bytes(),
                b"m",
                b"ASC",
                b"COUNT",
                b"8",
            ])
            .expect("GEOSEARCH");
        match reply {
            Reply::Array(Some(items)) => items
                .into_iter()
                .filter_map(|item| match item {
                    Reply::Bulk(Some(member)) => String::from_utf8(member).ok(),
                    _ => None,
                })
                .collect(),
            other => panic!("GEOSEARCH answered {other:?}"),
        }
    }

    /// The same answer as one 3 km search, as a client would ask for it: GEOSEARCH
    /// gathers and sorts every member inside the radius, so start small (200 m) and
    /// double until 8 are found or the radius reaches 3 km. 8 found within r are the
    /// nearest 8.
    fn growing_search(&mut self, at: LatLng) -> Vec<String> {
        let mut radius = GROWING_FROM_M;
        loop {
            let found = self.geosearch(at, radius);
            if found.len() >= K || radius >= RADIUS_M {
                return found;
            }
            radius = (radius * 2.0).min(RADIUS_M);
        }
    }
}

impl Client for Redis {
    fn search(&mut self, at: LatLng) -> Vec<String> {
        self.geosearch(at, RADIUS_M)
    }

    fn move_to(&mut self, id: &str, at: LatLng) {
        let (lng, lat) = (at.lng().to_string(), at.lat().to_string());
        let reply = self
            .call(&[
                b"GEOADD",
                REDIS_KEY.as_bytes(),
                lng.as_bytes(),
                lat.as_bytes(),
                id.as_bytes(),
            ])
            .expect("GEOADD");
        assert!(
            matches!(reply, Reply::Integer(_)),
            "GEOADD answered {reply:?}"
        );
    }
}

fn redis_side(data: &Dataset, args: &Args, port: u16) -> io::Result<Side> {
    let mut redis = Redis::connect(port)?;
    match redis.call(&[b"FLUSHALL"])? {
        Reply::Status => {}
        other => return Err(io::Error::other(format!("FLUSHALL answered {other:?}"))),
    }
    let memory_before = redis.info_field("memory", "used_memory");
    // Bulk load: GEOADDs of 1,000 members, all written before the replies are read.
    let start = StdInstant::now();
    let mut commands = 0;
    let chunks = data.ids.chunks(1_000).zip(data.drivers.chunks(1_000));
    for (ids, positions) in chunks {
        let coordinates: Vec<(String, String)> = positions
            .iter()
            .map(|p| (p.lng().to_string(), p.lat().to_string()))
            .collect();
        let mut command: Vec<&[u8]> = vec![b"GEOADD", REDIS_KEY.as_bytes()];
        for (id, (lng, lat)) in ids.iter().zip(&coordinates) {
            command.extend([lng.as_bytes(), lat.as_bytes(), id.as_bytes()]);
        }
        redis.send(&command)?;
        commands += 1;
    }
    redis.writer.flush()?;
    let mut added = 0;
    for _ in 0..commands {
        if let Reply::Integer(n) = redis.read()? {
            added += n;
        }
    }
    let load = start.elapsed();
    assert_eq!(
        added as usize,
        data.drivers.len(),
        "GEOADD added every driver"
    );
    let memory_bytes = memory_before
        .zip(redis.info_field("memory", "used_memory"))
        .map(|(a, b)| b.saturating_sub(a));

    let answers = data.queries[..AGREEMENT_QUERIES.min(data.queries.len())]
        .iter()
        .map(|q| redis.search(*q))
        .collect();
    let growing_answers = data.queries[..AGREEMENT_QUERIES.min(data.queries.len())]
        .iter()
        .map(|q| redis.growing_search(*q))
        .collect();
    drop(redis);
    let connect = || Redis::connect(port).expect("connect to Redis");
    let search = |c: &mut Redis, q: &LatLng| drop(std::hint::black_box(c.search(*q)));
    let moving = |c: &mut Redis, m: &(u32, LatLng)| c.move_to(&data.ids[m.0 as usize], m.1);
    let (first, rest) = data.moves.split_at(data.moves.len() / 4);
    let search_1 = run_clients(1, &data.queries, 50, args.phase, &connect, &search);
    let search_n = run_clients(
        args.redis_search_clients,
        &data.queries,
        20,
        args.phase,
        &connect,
        &search,
    );
    let growing = |c: &mut Redis, q: &LatLng| drop(std::hint::black_box(c.growing_search(*q)));
    let growing_1 = run_clients(1, &data.queries, 50, args.phase, &connect, &growing);
    let growing_n = run_clients(
        args.redis_search_clients,
        &data.queries,
        20,
        args.phase,
        &connect,
        &growing,
    );
    let move_1 = run_clients(1, first, 50, args.phase, &connect, &moving);
    let move_n = run_clients(
        args.redis_move_clients,
        rest,
        20,
        args.phase,
        &connect,
        &moving,
    );
    Ok(Side {
        name: "Redis GEO",
        load,
        memory_bytes,
        search_1,
        search_n: Some(search_n),
        growing: Some((growing_1, growing_n, growing_answers)),
        move_1,
        move_n: Some(move_n),
        answers,
    })
}

// ---------------------------------------------------------------------------------------
// PostGIS, through sqlx (hail's own PostgreSQL driver)

const PG_SEARCH: &str = "SELECT id FROM drivers \
     WHERE available AND ST_DWithin(geog, ST_SetSRID(ST_MakePoint($1, $2), 4326)::geography, $3) \
     ORDER BY geog <-> ST_SetSRID(ST_MakePoint($1, $2), 4326)::geography LIMIT $4";
const PG_MOVE: &str = "UPDATE drivers \
     SET geog = ST_SetSRID(ST_MakePoint($2, $3), 4326)::geography WHERE id = $1";

struct Postgres {
    runtime: tokio::runtime::Runtime,
    connection: PgConnection,
}

impl Postgres {
    fn connect(port: u16) -> Result<Postgres, sqlx::Error> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
        let connection = runtime.block_on(PgConnection::connect(&url))?;
        Ok(Postgres {
            runtime,
            connection,
        })
    }

    fn execute(&mut self, sql: &'static str) -> Result<(), sqlx::Error> {
        let Postgres {
            runtime,
            connection,
        } = self;
        runtime.block_on(sqlx::raw_sql(sql).execute(connection))?;
        Ok(())
    }

    fn scalar(&mut self, sql: &'static str) -> Result<i64, sqlx::Error> {
        let Postgres {
            runtime,
            connection,
        } = self;
        runtime.block_on(sqlx::query_scalar(sql).fetch_one(connection))
    }
}

impl Client for Postgres {
    fn search(&mut self, at: LatLng) -> Vec<String> {
        let Postgres {
            runtime,
            connection,
        } = self;
        runtime
            .block_on(
                sqlx::query(PG_SEARCH)
                    .bind(at.lng())
                    .bind(at.lat())
                    .bind(RADIUS_M)
                    .bind(K as i64)
                    .fetch_all(connection),
            )
            .expect("PostGIS search")
            .into_iter()
            .map(|row| row.get::<String, _>(0))
            .collect()
    }

    fn move_to(&mut self, id: &str, at: LatLng) {
        let Postgres {
            runtime,
            connection,
        } = self;
        let done = runtime
            .block_on(
                sqlx::query(PG_MOVE)
                    .bind(id)
                    .bind(at.lng())
                    .bind(at.lat())
                    .execute(connection),
            )
            .expect("PostGIS update");
        assert_eq!(done.rows_affected(), 1);
    }
}

fn postgis_side(data: &Dataset, args: &Args, port: u16) -> Result<Side, sqlx::Error> {
    let mut pg = Postgres::connect(port)?;
    pg.execute(
        "CREATE EXTENSION IF NOT EXISTS postgis; \
         DROP TABLE IF EXISTS drivers; \
         CREATE TABLE drivers (id text PRIMARY KEY, available boolean NOT NULL, \
                               geog geography(Point, 4326) NOT NULL)",
    )?;
    let mut rows = String::with_capacity(data.drivers.len() * 64);
    let start = StdInstant::now();
    for (id, p) in data.ids.iter().zip(&data.drivers) {
        writeln!(rows, "{id}\tt\tSRID=4326;POINT({} {})", p.lng(), p.lat()).expect("a string");
    }
    {
        let Postgres {
            runtime,
            connection,
        } = &mut pg;
        runtime.block_on(async {
            let mut copy = connection
                .copy_in_raw("COPY drivers (id, available, geog) FROM STDIN")
                .await?;
            copy.send(rows.as_bytes()).await?;
            copy.finish().await
        })?;
    }
    pg.execute("CREATE INDEX drivers_geog ON drivers USING gist (geog); ANALYZE drivers")?;
    let load = start.elapsed();
    let memory_bytes = Some(pg.scalar("SELECT pg_total_relation_size('drivers')")? as u64);
    let answers = data.queries[..AGREEMENT_QUERIES.min(data.queries.len())]
        .iter()
        .map(|q| pg.search(*q))
        .collect();
    drop(pg);

    let connect = || Postgres::connect(port).expect("connect to PostgreSQL");
    let search = |c: &mut Postgres, q: &LatLng| drop(std::hint::black_box(c.search(*q)));
    let moving = |c: &mut Postgres, m: &(u32, LatLng)| c.move_to(&data.ids[m.0 as usize], m.1);
    let (first, rest) = data.moves.split_at(data.moves.len() / 4);
    let search_1 = run_clients(1, &data.queries, 50, args.phase, &connect, &search);
    let search_n = run_clients(
        args.pg_clients,
        &data.queries,
        20,
        args.phase,
        &connect,
        &search,
    );
    let move_1 = run_clients(1, first, 50, args.phase, &connect, &moving);
    let move_n = run_clients(args.pg_clients, rest, 20, args.phase, &connect, &moving);
    Ok(Side {
        name: "PostGIS",
        load,
        memory_bytes,
        search_1,
        search_n: Some(search_n),
        move_1,
        move_n: Some(move_n),
        answers,
        ..Side::default()
    })
}

// ---------------------------------------------------------------------------------------
// Agreement and the table

/// Compares the answers of two sides: same set of 8, or differing only where the 8th and
/// the next are within `tie_m` of each other (distances from the dataset's positions).
fn agreement(data: &Dataset, a: &Side, b: &Side, tie_m: f64) -> (usize, usize, usize) {
    let index: std::collections::HashMap<&str, usize> = data
        .ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.as_str(), i))
        .collect();
    let (mut same, mut ties, mut differ) = (0, 0, 0);
    for (q, (x, y)) in data.queries.iter().zip(a.answers.iter().zip(&b.answers)) {
        let (xs, ys): (HashSet<&String>, HashSet<&String>) =
            (x.iter().collect(), y.iter().collect());
        if xs == ys {
            same += 1;
            continue;
        }
        let distance = |id: &String| q.distance_m(&data.drivers[index[id.as_str()]]);
        let mut union: Vec<f64> = xs.union(&ys).map(|id| distance(id)).collect();
        union.sort_by(f64::total_cmp);
        let kth = union[(K - 1).min(union.len() - 1)];
        let odd: Vec<f64> = xs
            .symmetric_difference(&ys)
            .map(|id| distance(id))
            .collect();
        if x.len() == y.len() && odd.iter().all(|d| (d - kth).abs() <= tie_m) {
            // The sets differ only at the edge: drivers about as far as the 8th.
            println!(
                "  edge tie at {:.5},{:.5}: {} and {} differ by drivers at {odd:.2?} m, the 8th at {kth:.2} m",
                q.lat(),
                q.lng(),
                a.name,
                b.name
            );
            ties += 1;
            continue;
        }
        differ += 1;
        eprintln!(
            "  query {q:?}: {} {x:?} vs {} {y:?}; differing at {odd:?} m, 8th at {kth:.2} m",
            a.name, b.name
        );
    }
    (same, ties, differ)
}

fn latency(us: f64) -> String {
    if us.is_nan() {
        "–".into()
    } else if us < 10.0 {
        format!("{us:.2} µs")
    } else if us < 1_000.0 {
        format!("{us:.1} µs")
    } else {
        format!("{:.2} ms", us / 1_000.0)
    }
}

fn rate(per_s: f64) -> String {
    if per_s >= 1e6 {
        format!("{:.2} M/s", per_s / 1e6)
    } else if per_s >= 1e3 {
        format!("{:.1} k/s", per_s / 1e3)
    } else {
        format!("{per_s:.0} /s")
    }
}

fn seconds(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// hail's figure over the peer's, and in words which is better by how much.
fn ratio(hail: f64, peer: Option<f64>, lower_is_better: bool) -> String {
    let Some(peer) = peer.filter(|p| p.is_finite() && *p > 0.0) else {
        return "–".into();
    };
    let r = hail / peer;
    let better = if lower_is_better { 1.0 / r } else { r };
    let times = |x: f64| {
        if x >= 10.0 {
            format!("{x:.0}×")
        } else {
            format!("{x:.1}×")
        }
    };
    let words = if better >= 1.0 {
        format!("hail {} better", times(better))
    } else {
        format!("peer {} better", times(1.0 / better))
    };
    let r = if r >= 0.1 {
        format!("{r:.2}")
    } else {
        format!("{r:.4}")
    };
    format!("{r} ({words})")
}

fn main() {
    let args = Args::parse();
    let data = Dataset::generate(&args);
    let dir = data.write(&args).expect("write the dataset");
    println!(
        "dataset: {} drivers over Seoul (lat {}–{}, lng {}–{}), {} query points, {} moves of {} m, seed {} → {}",
        data.drivers.len(),
        LAT.0,
        LAT.1,
        LNG.0,
        LNG.1,
        data.queries.len(),
        data.moves.len(),
        MOVE_M,
        args.seed,
        dir.display()
    );

    println!("hail: loading and measuring in process …");
    let (hail, bare) = hail_side(&data, &args);
    let redis = args.redis_port.map(|port| {
        println!("Redis GEO on 127.0.0.1:{port}: loading and measuring …");
        redis_side(&data, &args, port).expect("Redis side")
    });
    let postgis = args.pg_port.map(|port| {
        println!("PostGIS on 127.0.0.1:{port}: loading and measuring …");
        postgis_side(&data, &args, port).expect("PostGIS side")
    });

    let tie_m = 1.0;
    println!();
    println!(
        "agreement on the nearest {K} within 3 km, first {} query points (a tie: the sets differ only \
         at the edge, between drivers within {tie_m} m of the same distance):",
        hail.answers.len()
    );
    let mut all_three = 0;
    for (peer, name) in [(&redis, "Redis"), (&postgis, "PostGIS")] {
        if let Some(peer) = peer {
            let (same, ties, differ) = agreement(&data, &hail, peer, tie_m);
            println!(
                "  hail vs {name}: {same}/{} identical sets, {ties} differ by an edge tie, {differ} differ otherwise",
                hail.answers.len()
            );
        }
    }
    if let (Some(r), Some(p)) = (&redis, &postgis) {
        for ((h, r), p) in hail.answers.iter().zip(&r.answers).zip(&p.answers) {
            let set = |v: &Vec<String>| v.iter().cloned().collect::<HashSet<_>>();
            if set(h) == set(r) && set(h) == set(p) {
                all_three += 1;
            }
        }
        println!("  all three identical: {all_three}/{}", hail.answers.len());
    }

    let peers = [redis.as_ref(), postgis.as_ref()];
    let name = |s: Option<&Side>| s.map_or("–", |s| s.name);
    println!();
    println!(
        "| operation ({} drivers) | {} | {} | {} | hail/Redis | hail/PostGIS |",
        data.drivers.len(),
        hail.name,
        name(peers[0]),
        name(peers[1])
    );
    println!("|---|---|---|---|---|---|");
    type Pick<'a> = &'a dyn Fn(&Side) -> Option<f64>;
    let row = |label: String, pick: Pick, fmt: &dyn Fn(f64) -> String, lower: bool| {
        let h = pick(&hail).unwrap_or(f64::NAN);
        let cells: Vec<Option<f64>> = peers.iter().map(|p| p.and_then(pick)).collect();
        let cell = |v: Option<f64>| v.map_or("–".to_string(), fmt);
        println!(
            "| {label} | {} | {} | {} | {} | {} |",
            fmt(h),
            cell(cells[0]),
            cell(cells[1]),
            ratio(h, cells[0], lower),
            ratio(h, cells[1], lower)
        );
    };
    let clients = |side: Option<&Side>, pick: fn(&Side) -> &Option<Phase>| {
        side.and_then(|s| pick(s).as_ref().map(|p| p.clients.to_string()))
            .unwrap_or_else(|| "–".into())
    };
    row(
        "nearest 8 within 3 km: median latency, 1 client".into(),
        &|s| Some(s.search_1.median_us()),
        &latency,
        true,
    );
    row(
        "nearest 8 within 3 km: p99 latency, 1 client".into(),
        &|s| Some(s.search_1.percentile_us(0.99)),
        &latency,
        true,
    );
    row(
        format!(
            "nearest 8 within 3 km: throughput (hail 1 thread; Redis {} / PostGIS {} clients)",
            clients(peers[0], |s| &s.search_n),
            clients(peers[1], |s| &s.search_n)
        ),
        &|s| Some(s.search_n.as_ref().unwrap_or(&s.search_1).per_second()),
        &rate,
        false,
    );
    row(
        "nearest 8 within 3 km: median latency under that load".into(),
        &|s| Some(s.search_n.as_ref().unwrap_or(&s.search_1).median_us()),
        &latency,
        true,
    );
    row(
        "move a driver 40 m: median latency, 1 client".into(),
        &|s| Some(s.move_1.median_us()),
        &latency,
        true,
    );
    row(
        "move a driver 40 m: p99 latency, 1 client".into(),
        &|s| Some(s.move_1.percentile_us(0.99)),
        &latency,
        true,
    );
    row(
        format!(
            "move a driver 40 m: throughput (hail 1 thread; Redis {} / PostGIS {} clients)",
            clients(peers[0], |s| &s.move_n),
            clients(peers[1], |s| &s.move_n)
        ),
        &|s| Some(s.move_n.as_ref().unwrap_or(&s.move_1).per_second()),
        &rate,
        false,
    );
    row(
        "move a driver 40 m: median latency under that load".into(),
        &|s| Some(s.move_n.as_ref().unwrap_or(&s.move_1).median_us()),
        &latency,
        true,
    );
    row(
        format!("bulk load of {} drivers", data.drivers.len()),
        &|s| Some(s.load.as_secs_f64()),
        &|v| seconds(Duration::from_secs_f64(v)),
        true,
    );
    row(
        "memory for the fleet (hail RSS growth; Redis used_memory; table + indexes)".into(),
        &|s| s.memory_bytes.map(|b| b as f64 / (1024.0 * 1024.0)),
        &|v| format!("{v:.0} MiB"),
        true,
    );
    if let Some((one, many, answers)) = redis.as_ref().and_then(|r| r.growing.as_ref()) {
        let grown = Side {
            name: "Redis growing",
            answers: answers.clone(),
            ..Side::default()
        };
        let (same, ties, differ) = agreement(&data, &hail, &grown, tie_m);
        println!();
        println!(
            "Redis GEO asked as a client would (GEOSEARCH from {GROWING_FROM_M} m, doubling to 3 km until 8 are found): \
             nearest 8 median {} (p99 {}) with 1 client, {} with {} clients (median {} under that load); \
             hail/Redis on the median {}; agreement with hail {same}/{} identical, {ties} edge ties, {differ} other",
            latency(one.median_us()),
            latency(one.percentile_us(0.99)),
            rate(many.per_second()),
            many.clients,
            latency(many.median_us()),
            ratio(hail.search_1.median_us(), Some(one.median_us()), true),
            hail.answers.len(),
        );
    }
    println!();
    println!(
        "ops measured: hail search {} / move {} (batches of {HAIL_BATCH}, mean per op); {}",
        hail.search_1.ops(),
        hail.move_1.ops(),
        peers
            .iter()
            .flatten()
            .map(|s| format!(
                "{} search {} + {} / move {} + {}",
                s.name,
                s.search_1.ops(),
                s.search_n.as_ref().map_or(0, Phase::ops),
                s.move_1.ops(),
                s.move_n.as_ref().map_or(0, Phase::ops)
            ))
            .collect::<Vec<_>>()
            .join("; ")
    );
    println!(
        "hail's bare FleetIndex (no mutex): nearest 8 median {}, move median {}, bulk load {}",
        latency(bare.search_1.median_us()),
        latency(bare.move_1.median_us()),
        seconds(bare.load)
    );
}
