//! Batched matching (DESIGN §4, `HAIL_MATCHING=batch`): instead of offering each trip on
//! its own to its nearest driver, the book collects the waiting trips of a window and
//! assigns them all at once, so that a driver ideal for one trip is not taken by another
//! whose second-best was almost as close. Pure: the book builds the problem, this solves
//! it.
//!
//! The objective: first as many trips matched as possible, then the least total pickup
//! ETA. Each trip only considers its own nearest candidates (as the greedy dispatcher
//! would), so the problem is sparse: it splits into independent parts — trips that share
//! no candidate driver cannot affect each other — and each part is solved exactly with
//! the Kuhn–Munkres algorithm (`pathfinding`), on a dense matrix of that part only. A
//! part's size is bounded by the number of trips the book puts in a window
//! (`HAIL_BATCH_MAX_TRIPS`) times the candidates per trip.

use pathfinding::{kuhn_munkres::kuhn_munkres_min, matrix::Matrix};

/// The cost of a pair that is not allowed (the driver is not among the trip's candidates):
/// larger than any sum of real costs, so the solver only uses it when nothing else fits —
/// and such a pair is then left unmatched.
const FORBIDDEN: i64 = 1_000_000_000_000;

/// One trip's allowed drivers (indices into the window's drivers) and the cost of each
/// (pickup ETA in milliseconds).
pub type Options = Vec<(usize, i64)>;

/// The best assignment: for each trip, its driver (or none), and how many trips the part
/// it was solved in held (0 for a trip without candidates) — the audit log's batch size.
pub fn assign(options: &[Options], drivers: usize) -> (Vec<Option<usize>>, Vec<usize>) {
    let mut assigned = vec![None; options.len()];
    let mut part_size = vec![0; options.len()];
    for (trips, part_drivers) in components(options, drivers) {
        let chosen = solve(options, &trips, &part_drivers);
        for (trip, driver) in trips.iter().zip(chosen) {
            assigned[*trip] = driver;
            part_size[*trip] = trips.len();
        }
    }
    (assigned, part_size)
}

/// Trips linked by a shared candidate, with the drivers they share (union–find over
/// drivers).
fn components(options: &[Options], drivers: usize) -> Vec<(Vec<usize>, Vec<usize>)> {
    let mut parent: Vec<usize> = (0..drivers).collect();
    fn root(parent: &mut [usize], mut at: usize) -> usize {
        while parent[at] != at {
            parent[at] = parent[parent[at]];
            at = parent[at];
        }
        at
    }
    for trip in options {
        if let Some(&(first, _)) = trip.first() {
            for &(other, _) in &trip[1..] {
                let (a, b) = (root(&mut parent, first), root(&mut parent, other));
                parent[a] = b;
            }
        }
    }
    let mut by_root: std::collections::BTreeMap<usize, (Vec<usize>, Vec<usize>)> =
        Default::default();
    for (index, trip) in options.iter().enumerate() {
        if let Some(&(first, _)) = trip.first() {
            by_root
                .entry(root(&mut parent, first))
                .or_default()
                .0
                .push(index);
        }
    }
    for driver in 0..drivers {
        let at = root(&mut parent, driver);
        if let Some(part) = by_root.get_mut(&at) {
            part.1.push(driver);
        }
    }
    by_root.into_values().collect()
}

/// Solves one part exactly: rows are the smaller side (Kuhn–Munkres assigns every row).
fn solve(options: &[Options], trips: &[usize], drivers: &[usize]) -> Vec<Option<usize>> {
    let column_of = |driver: usize| drivers.binary_search(&driver).ok();
    let cost = |trip: usize, column: usize| {
        options[trips[trip]]
            .iter()
            .find(|(driver, _)| column_of(*driver) == Some(column))
            .map_or(FORBIDDEN, |(_, cost)| *cost)
    };
    let trips_are_rows = trips.len() <= drivers.len();
    let (rows, columns) = if trips_are_rows {
        (trips.len(), drivers.len())
    } else {
        (drivers.len(), trips.len())
    };
    let mut weights = Vec::with_capacity(rows * columns);
    for row in 0..rows {
        for column in 0..columns {
            weights.push(if trips_are_rows {
                cost(row, column)
            } else {
                cost(column, row)
            });
        }
    }
    let Ok(matrix) = Matrix::from_vec(rows, columns, weights) else {
        return vec![None; trips.len()];
    };
    let (_, row_to_column) = kuhn_munkres_min(&matrix);
    let mut chosen = vec![None; trips.len()];
    for (row, column) in row_to_column.into_iter().enumerate() {
        let (trip, driver) = if trips_are_rows {
            (row, column)
        } else {
            (column, row)
        };
        if cost(trip, driver) < FORBIDDEN {
            chosen[trip] = Some(drivers[driver]);
        }
    }
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngExt, SeedableRng, rngs::StdRng};

    /// (matched, total cost) of an assignment; more matched first, then less cost.
    fn score(options: &[Options], assigned: &[Option<usize>]) -> (usize, i64) {
        let mut used = std::collections::HashSet::new();
        let mut total = 0;
        for (trip, driver) in assigned.iter().enumerate() {
            if let Some(driver) = driver {
                assert!(used.insert(*driver), "driver {driver} assigned twice");
                let (_, cost) = options[trip]
                    .iter()
                    .find(|(d, _)| d == driver)
                    .expect("only a trip's own candidates");
                total += cost;
            }
        }
        (used.len(), total)
    }

    /// Every partial assignment, by brute force: the best (most matched, then cheapest).
    fn brute_force(options: &[Options], trip: usize, used: &mut Vec<bool>) -> (usize, i64) {
        if trip == options.len() {
            return (0, 0);
        }
        let mut best = brute_force(options, trip + 1, used);
        for &(driver, cost) in &options[trip] {
            if !used[driver] {
                used[driver] = true;
                let (matched, total) = brute_force(options, trip + 1, used);
                used[driver] = false;
                let candidate = (matched + 1, total + cost);
                if candidate.0 > best.0 || (candidate.0 == best.0 && candidate.1 < best.1) {
                    best = candidate;
                }
            }
        }
        best
    }

    #[test]
    fn the_nearest_first_trap_is_avoided() {
        // Driver 0 is best for both trips; trip 1 has nowhere else to go, trip 0 has a
        // second-best almost as close. Greedy gives trip 0 driver 0 and leaves trip 1
        // without a driver (or with a far one); the batch gives each a driver.
        let options = vec![vec![(0, 60_000), (1, 70_000)], vec![(0, 65_000)]];
        let (assigned, part_size) = assign(&options, 2);
        assert_eq!(assigned, [Some(1), Some(0)]);
        assert_eq!(part_size, [2, 2]);
        // With a cheaper far option the total decides.
        let options = vec![
            vec![(0, 60_000), (1, 300_000)],
            vec![(0, 65_000), (2, 70_000)],
        ];
        let (assigned, _) = assign(&options, 3);
        assert_eq!(assigned, [Some(0), Some(2)]);
    }

    #[test]
    fn more_trips_than_drivers_and_separate_parts() {
        let options = vec![
            vec![(0, 10)],
            vec![(0, 5)],
            vec![(0, 7)],
            vec![(1, 3), (2, 4)],
            vec![],
        ];
        let (assigned, part_size) = assign(&options, 3);
        assert_eq!(assigned, [None, Some(0), None, Some(1), None]);
        assert_eq!(
            part_size,
            [3, 3, 3, 1, 0],
            "two parts, and a trip with no candidate"
        );
    }

    #[test]
    fn optimal_on_small_random_cases_against_brute_force() {
        let mut rng = StdRng::seed_from_u64(7);
        for case in 0..2_000 {
            let trips = rng.random_range(1..=6);
            let drivers = rng.random_range(1..=6);
            let mut options: Vec<Options> = vec![Vec::new(); trips];
            for trip in &mut options {
                for driver in 0..drivers {
                    if rng.random_range(0.0..1.0) < 0.6 {
                        trip.push((driver, rng.random_range(1..1_000)));
                    }
                }
            }
            let (assigned, _) = assign(&options, drivers);
            let best = brute_force(&options, 0, &mut vec![false; drivers]);
            assert_eq!(score(&options, &assigned), best, "case {case}: {options:?}");
        }
    }
}
