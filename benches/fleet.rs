//! The fleet index at country scale (DESIGN §6): a moving driver's update and the
//! nearest-8-within-3-km query, with 250,000 and 1,000,000 drivers online around Korea's
//! cities, against the naive R-tree update (remove + insert of a point) on the same data.
//!
//! `cargo bench --bench fleet` (one size: `cargo bench --bench fleet -- fleet_250k`)
//!
//! Two kinds of move: *driving* — each driver keeps a heading and moves 40 m a ping (a
//! taxi at 36 km/h pinging every 4 s), turning onto a new random heading every tenth
//! ping on average — and *teleport*, a new position drawn from the whole fleet's spread
//! (the worst case for the index: every such move leaves its box). The moves' positions
//! are computed outside the measured call where they cost trigonometry (a turn); a step
//! straight on is two additions, as a driver's new position costs the server nothing.
//!
//! Times are the benchmark thread's CPU time per operation (`CLOCK_THREAD_CPUTIME_ID`),
//! not the wall clock: on a shared two-core machine another process's turn on the core
//! would otherwise count as ours. Its use of the caches still counts, as it would in a
//! server.

use std::time::Duration;

use criterion::{
    BenchmarkId, Criterion, criterion_group, criterion_main,
    measurement::{Measurement, ValueFormatter, WallTime},
};
use hail::{
    fleet::{DriverKey, FleetIndex},
    geometry::LatLng,
};
use rand::{RngExt, SeedableRng, rngs::StdRng};
use rstar::RTree;
use tokio::time::Instant;

/// Seoul, Busan, Incheon, Daegu, Daejeon, Gwangju: where Korea's taxis are.
const CITIES: [(f64, f64, f64); 6] = [
    (37.5665, 126.9780, 0.45),
    (35.1796, 129.0756, 0.15),
    (37.4563, 126.7052, 0.12),
    (35.8714, 128.6014, 0.12),
    (36.3504, 127.3845, 0.08),
    (35.1595, 126.8526, 0.08),
];

const STEP_M: f64 = 40.0;
const METRES_PER_DEGREE: f64 = 111_195.0;

fn positions(rng: &mut StdRng, count: usize) -> Vec<LatLng> {
    (0..count)
        .map(|_| {
            let mut pick: f64 = rng.random_range(0.0..1.0);
            let &(lat, lng, _) = CITIES
                .iter()
                .find(|(_, _, share)| {
                    pick -= share;
                    pick < 0.0
                })
                .unwrap_or(&CITIES[0]);
            let centre = LatLng::new(lat, lng).unwrap();
            centre.destination(
                rng.random_range(0.0..360.0),
                rng.random_range(0.0f64..1.0).sqrt() * 15_000.0,
            )
        })
        .collect()
}

/// Every driver driving: a position and a step of 40 m along its heading, in degrees.
struct Traffic {
    at: Vec<LatLng>,
    step: Vec<(f64, f64)>,
    rng: StdRng,
}

impl Traffic {
    fn new(at: Vec<LatLng>, seed: u64) -> Traffic {
        let mut rng = StdRng::seed_from_u64(seed);
        let step = at.iter().map(|p| heading_step(p, &mut rng)).collect();
        Traffic { at, step, rng }
    }

    /// Drives driver `i` on by one ping; one ping in ten it turns first.
    fn drive(&mut self, i: usize) -> LatLng {
        if self.rng.random_range(0..10) == 0 {
            self.step[i] = heading_step(&self.at[i], &mut self.rng);
        }
        let (d_lat, d_lng) = self.step[i];
        let next = LatLng::new(self.at[i].lat() + d_lat, self.at[i].lng() + d_lng);
        self.at[i] = next.unwrap_or(self.at[i]);
        self.at[i]
    }
}

fn heading_step(at: &LatLng, rng: &mut StdRng) -> (f64, f64) {
    let heading = rng.random_range(0.0f64..360.0).to_radians();
    let d_lat = STEP_M * heading.cos() / METRES_PER_DEGREE;
    let d_lng = STEP_M * heading.sin() / (METRES_PER_DEGREE * at.lat().to_radians().cos());
    (d_lat, d_lng)
}

/// The calling thread's CPU time, in nanoseconds.
struct ThreadCpu;

fn thread_cpu_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec for the call to fill; this clock always exists
    // on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// Formats nanoseconds as the wall clock's figures are.
static NANOSECONDS: WallTime = WallTime;

impl Measurement for ThreadCpu {
    type Intermediate = u64;
    type Value = u64;
    fn start(&self) -> u64 {
        thread_cpu_ns()
    }
    fn end(&self, start: u64) -> u64 {
        thread_cpu_ns().saturating_sub(start)
    }
    fn add(&self, a: &u64, b: &u64) -> u64 {
        a + b
    }
    fn zero(&self) -> u64 {
        0
    }
    fn to_f64(&self, value: &u64) -> f64 {
        *value as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        NANOSECONDS.formatter()
    }
}

fn size(c: &mut Criterion<ThreadCpu>, drivers: usize, name: &str) {
    let mut rng = StdRng::seed_from_u64(42);
    let now = Instant::now();
    let mut index = FleetIndex::new(Duration::from_secs(3_600));
    let start = positions(&mut rng, drivers);
    // Each driver's socket holds its key, as the server's do.
    let ids: Vec<DriverKey> = (0..drivers)
        .zip(&start)
        .map(|(i, position)| {
            let key = index.connect(&format!("drv_{i}"), None, now, hail::trip::Timestamp(0));
            index.ping(&key, *position, None, now);
            key
        })
        .collect();
    let mut traffic = Traffic::new(start.clone(), 9);
    // Let the fleet drive a while first, so the boxes are where driving leaves them and
    // not all fresh from the first ping.
    for round in 0..8 {
        for (i, id) in ids.iter().enumerate() {
            let at = traffic.drive(i);
            if (i + round) % 2 == 0 {
                index.ping(id, at, None, now);
            }
        }
    }

    let mut group = c.benchmark_group(name);
    // Drivers ping in an order unrelated to where they are, as sockets do.
    let mut next = 0;
    group.bench_function(BenchmarkId::new("update", "driving 40 m"), |b| {
        b.iter(|| {
            next = (next + 7_919) % drivers;
            let at = traffic.drive(next);
            index.ping(&ids[next], at, None, now)
        })
    });
    let pickups = positions(&mut StdRng::seed_from_u64(7), 4_096);
    let mut query = 0;
    group.bench_function(BenchmarkId::new("nearest_8_within_3km", "driving"), |b| {
        b.iter(|| {
            query = (query + 1) % pickups.len();
            index
                .nearest_available(pickups[query], 3_000.0, 8, now, |_| false)
                .len()
        })
    });
    let anywhere = positions(&mut StdRng::seed_from_u64(11), 1 << 20);
    let mut jump = 0;
    group.bench_function(BenchmarkId::new("update", "teleport"), |b| {
        b.iter(|| {
            next = (next + 7_919) % drivers;
            jump = (jump + 1) % anywhere.len();
            index.ping(&ids[next], anywhere[jump], None, now)
        })
    });
    group.bench_function(
        BenchmarkId::new("nearest_8_within_3km", "after teleports"),
        |b| {
            b.iter(|| {
                query = (query + 1) % pickups.len();
                index
                    .nearest_available(pickups[query], 3_000.0, 8, now, |_| false)
                    .len()
            })
        },
    );

    // The baseline: points in an R-tree, moved by remove + insert.
    let mut naive = RTree::bulk_load(traffic.at.iter().map(|p| p.unit_vector()).collect());
    let mut units: Vec<[f64; 3]> = traffic.at.iter().map(|p| p.unit_vector()).collect();
    group.bench_function(
        BenchmarkId::new("update", "driving 40 m, naive remove+insert"),
        |b| {
            b.iter(|| {
                next = (next + 7_919) % drivers;
                let moved = traffic.drive(next).unit_vector();
                naive.remove(&units[next]);
                naive.insert(moved);
                units[next] = moved;
            })
        },
    );
    group.finish();
}

fn fleet(c: &mut Criterion<ThreadCpu>) {
    size(c, 250_000, "fleet_250k");
    size(c, 1_000_000, "fleet_1m");
}

criterion_group! {
    name = benches;
    config = Criterion::default().with_measurement(ThreadCpu);
    targets = fleet
}
criterion_main!(benches);
