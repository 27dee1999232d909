//! Ranking candidates (DESIGN §4): the innermost search radius that has any, then pickup
//! ETA through the [`Eta`] trait a road router can implement. Pure.

use crate::{
    fleet::{Candidate, DriverId},
    geometry::LatLng,
};

/// Estimated time for a driver to reach a pickup. Behind a trait so a road router (OSRM,
/// Valhalla) can replace the straight-line estimate.
pub trait Eta: Send + Sync {
    fn pickup_eta_s(&self, from: LatLng, to: LatLng, straight_line_m: f64) -> f64;
}

/// Straight line × detour factor at an average urban speed.
pub struct StraightLineEta {
    pub detour_factor: f64,
    pub speed_mps: f64,
}

impl Eta for StraightLineEta {
    fn pickup_eta_s(&self, _from: LatLng, _to: LatLng, straight_line_m: f64) -> f64 {
        straight_line_m * self.detour_factor / self.speed_mps
    }
}

/// A candidate with the inputs of its ranking, so "why this driver?" has an answer.
#[derive(Debug, Clone, PartialEq)]
pub struct RankedCandidate {
    pub driver_id: DriverId,
    pub distance_m: f64,
    pub eta_s: f64,
    /// Search radius the candidate was found in.
    pub radius_m: f64,
}

/// Candidates of the innermost radius that has any, best ETA first (greedy dispatch).
/// `nearest` is bounded by the outermost radius.
pub fn rank_candidates(
    nearest: &[Candidate],
    radii_m: &[f64],
    pickup: LatLng,
    eta: &dyn Eta,
) -> Vec<RankedCandidate> {
    let mut ranked = rank_all(nearest, radii_m, pickup, eta);
    let tier = radii_m
        .iter()
        .find(|r| ranked.iter().any(|c| c.radius_m == **r))
        .copied();
    ranked.retain(|c| Some(c.radius_m) == tier);
    ranked
}

/// Every candidate within a search radius, each with the first radius (in the configured
/// order) it falls in, best ETA first: what batched matching weighs.
pub fn rank_all(
    nearest: &[Candidate],
    radii_m: &[f64],
    pickup: LatLng,
    eta: &dyn Eta,
) -> Vec<RankedCandidate> {
    let mut ranked: Vec<RankedCandidate> = nearest
        .iter()
        .filter_map(|c| {
            let radius_m = radii_m.iter().copied().find(|r| c.distance_m <= *r)?;
            Some(RankedCandidate {
                driver_id: c.driver_id.clone(),
                distance_m: c.distance_m,
                eta_s: eta.pickup_eta_s(c.position, pickup, c.distance_m),
                radius_m,
            })
        })
        .collect();
    ranked.sort_by(|a, b| {
        a.eta_s
            .total_cmp(&b.eta_s)
            .then(a.distance_m.total_cmp(&b.distance_m))
    });
    ranked
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(lat: f64, lng: f64) -> LatLng {
        LatLng::new(lat, lng).unwrap()
    }

    fn candidate(id: &str, pickup: LatLng, bearing: f64, distance_m: f64) -> Candidate {
        Candidate {
            driver_id: id.into(),
            position: pickup.destination(bearing, distance_m),
            distance_m,
        }
    }

    #[test]
    fn ranking_prefers_the_innermost_radius_then_eta() {
        let pickup = p(37.5, 127.0);
        let eta = StraightLineEta {
            detour_factor: 1.3,
            speed_mps: 7.0,
        };
        let nearest = [
            candidate("a", pickup, 0.0, 1_000.0),
            candidate("b", pickup, 0.0, 2_000.0),
            candidate("c", pickup, 0.0, 5_000.0),
        ];
        let ranked = rank_candidates(&nearest, &[3_000.0, 6_000.0], pickup, &eta);
        let ids: Vec<&str> = ranked.iter().map(|c| &*c.driver_id).collect();
        assert_eq!(ids, ["a", "b"]);
        assert!((ranked[0].eta_s - 1_000.0 * 1.3 / 7.0).abs() < 1e-9);
        assert_eq!(ranked[0].radius_m, 3_000.0);
    }

    #[test]
    fn ranking_widens_when_the_inner_radius_is_empty() {
        let pickup = p(37.5, 127.0);
        let eta = StraightLineEta {
            detour_factor: 1.0,
            speed_mps: 10.0,
        };
        let nearest = [candidate("far", pickup, 0.0, 8_000.0)];
        let ranked = rank_candidates(&nearest, &[3_000.0, 6_000.0, 10_000.0], pickup, &eta);
        assert_eq!(ranked.len(), 1);
        assert_eq!(ranked[0].radius_m, 10_000.0);
        assert!(rank_candidates(&nearest, &[3_000.0, 6_000.0], pickup, &eta).is_empty());
    }

    /// A router that knows one driver is across a river: its ETA beats distance order.
    #[test]
    fn ranking_follows_the_eta_model_not_distance() {
        struct River;
        impl Eta for River {
            fn pickup_eta_s(&self, from: LatLng, _to: LatLng, straight_line_m: f64) -> f64 {
                if from.lat() > 37.5 {
                    straight_line_m * 10.0
                } else {
                    straight_line_m
                }
            }
        }
        let pickup = p(37.5, 127.0);
        let nearest = [
            candidate("north", pickup, 0.0, 110.0),
            candidate("south", pickup, 180.0, 220.0),
        ];
        let ranked = rank_candidates(&nearest, &[3_000.0], pickup, &River);
        assert_eq!(&*ranked[0].driver_id, "south");
    }
}
