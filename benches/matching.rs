//! One batched-matching solve (issue 15): a window of 200 waiting trips and 200 free
//! drivers around one hotspot, each trip with its 8 nearest drivers as candidates (as the
//! book builds it), assigned by `hail::dispatch::batch::assign`. Goal: ≤ 10 ms.
//!
//! `cargo bench --bench matching`

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use hail::{dispatch::batch, geometry::LatLng};
use rand::{RngExt, SeedableRng, rngs::StdRng};

/// Trips each with its `k` nearest of `drivers` drivers, all within 3 km of Gangnam.
fn window(trips: usize, drivers: usize, k: usize, seed: u64) -> Vec<batch::Options> {
    let mut rng = StdRng::seed_from_u64(seed);
    let gangnam = LatLng::new(37.4979, 127.0276).unwrap();
    let mut place = || {
        gangnam.destination(
            rng.random_range(0.0..360.0),
            rng.random_range(0.0f64..1.0).sqrt() * 3_000.0,
        )
    };
    let free: Vec<LatLng> = (0..drivers).map(|_| place()).collect();
    (0..trips)
        .map(|_| {
            let pickup = place();
            let mut near: Vec<(usize, f64)> = free
                .iter()
                .enumerate()
                .map(|(i, p)| (i, p.distance_m(&pickup)))
                .collect();
            near.sort_by(|a, b| a.1.total_cmp(&b.1));
            near.truncate(k);
            // Pickup ETA in ms: straight line × 1.3 at 7 m/s.
            near.into_iter()
                .map(|(i, m)| (i, (m * 1.3 / 7.0 * 1_000.0) as i64))
                .collect()
        })
        .collect()
}

fn solve(c: &mut Criterion) {
    let mut group = c.benchmark_group("batch_solve");
    for (trips, drivers) in [(50, 50), (200, 200), (200, 100), (500, 500)] {
        let options = window(trips, drivers, 8, 42);
        group.bench_function(
            BenchmarkId::new("assign", format!("{trips}x{drivers}")),
            |b| b.iter(|| batch::assign(std::hint::black_box(&options), drivers)),
        );
    }
    group.finish();
}

criterion_group!(benches, solve);
criterion_main!(benches);
