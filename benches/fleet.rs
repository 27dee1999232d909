//! The fleet index at country scale (DESIGN §6): a moving driver's update and the
//! nearest-8-within-3-km query, with 250,000 drivers online around Korea's cities, against
//! the naive R-tree update (remove + insert of a point) on the same data.
//!
//! `cargo bench --bench fleet`

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use hail::{fleet::FleetIndex, geometry::LatLng};
use rand::{RngExt, SeedableRng, rngs::StdRng};
use rstar::RTree;
use tokio::time::Instant;

const DRIVERS: usize = 250_000;

/// Seoul, Busan, Incheon, Daegu, Daejeon, Gwangju: where Korea's taxis are.
const CITIES: [(f64, f64, f64); 6] = [
    (37.5665, 126.9780, 0.45),
    (35.1796, 129.0756, 0.15),
    (37.4563, 126.7052, 0.12),
    (35.8714, 128.6014, 0.12),
    (36.3504, 127.3845, 0.08),
    (35.1595, 126.8526, 0.08),
];

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

fn fleet(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(42);
    let now = Instant::now();
    let mut index = FleetIndex::new(Duration::from_secs(3_600));
    let ids: Vec<String> = (0..DRIVERS).map(|i| format!("drv_{i}")).collect();
    let mut at = positions(&mut rng, DRIVERS);
    for (id, position) in ids.iter().zip(&at) {
        index.connect(id, None, now, hail::trip::Timestamp(0));
        index.ping(id, *position, None, now);
    }

    let mut group = c.benchmark_group("fleet_250k");
    // A taxi pinging every 4 s at city speed moves about 40 m a ping.
    let mut next = 0;
    group.bench_function(BenchmarkId::new("update_moving_driver", "slack box"), |b| {
        b.iter(|| {
            next = (next + 7_919) % DRIVERS;
            at[next] = at[next].destination(rng.random_range(0.0..360.0), 40.0);
            index.ping(&ids[next], at[next], None, now)
        })
    });
    let pickups = positions(&mut StdRng::seed_from_u64(7), 1_024);
    let mut query = 0;
    group.bench_function(BenchmarkId::new("nearest_8_within_3km", "slack box"), |b| {
        b.iter(|| {
            query = (query + 1) % pickups.len();
            index
                .nearest_available(pickups[query], 3_000.0, 8, now, |_| false)
                .len()
        })
    });

    // The baseline: points in an R-tree, moved by remove + insert.
    let mut naive = RTree::bulk_load(at.iter().map(|p| p.unit_vector()).collect());
    let mut units: Vec<[f64; 3]> = at.iter().map(|p| p.unit_vector()).collect();
    group.bench_function(
        BenchmarkId::new("update_moving_driver", "naive remove+insert"),
        |b| {
            b.iter(|| {
                next = (next + 7_919) % DRIVERS;
                at[next] = at[next].destination(rng.random_range(0.0..360.0), 40.0);
                let moved = at[next].unit_vector();
                naive.remove(&units[next]);
                naive.insert(moved);
                units[next] = moved;
            })
        },
    );
    group.finish();
}

criterion_group!(benches, fleet);
criterion_main!(benches);
