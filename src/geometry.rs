//! Coordinates and distances. Pure: no I/O.
//!
//! A [`LatLng`] can only be built valid (finite, lat in [-90, 90], lng in [-180, 180]), so
//! nothing past the edge — least of all the R-tree, which panics on NaN — sees a bad one.
//! For indexing we map a position to a unit vector on the sphere: straight-line (chord)
//! distance between unit vectors orders exactly like great-circle distance, with no seam at
//! the antimeridian and no singularity at the poles.

use geo::{Distance, Haversine, Point};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Mean Earth radius (GRS80), the same sphere `geo::Haversine` measures on.
pub const EARTH_RADIUS_M: f64 = 6_371_008.8;

/// A validated WGS84 position in degrees.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(try_from = "RawLatLng")]
pub struct LatLng {
    #[schema(minimum = -90, maximum = 90, example = 37.4979)]
    lat: f64,
    #[schema(minimum = -180, maximum = 180, example = 127.0276)]
    lng: f64,
}

#[derive(Deserialize)]
struct RawLatLng {
    lat: f64,
    lng: f64,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InvalidCoordinate {
    #[error("lat and lng must be finite numbers")]
    NotFinite,
    #[error("lat {0} is outside [-90, 90]")]
    LatOutOfRange(f64),
    #[error("lng {0} is outside [-180, 180]")]
    LngOutOfRange(f64),
}

impl TryFrom<RawLatLng> for LatLng {
    type Error = InvalidCoordinate;
    fn try_from(raw: RawLatLng) -> Result<Self, Self::Error> {
        LatLng::new(raw.lat, raw.lng)
    }
}

impl LatLng {
    pub fn new(lat: f64, lng: f64) -> Result<Self, InvalidCoordinate> {
        if !lat.is_finite() || !lng.is_finite() {
            return Err(InvalidCoordinate::NotFinite);
        }
        if !(-90.0..=90.0).contains(&lat) {
            return Err(InvalidCoordinate::LatOutOfRange(lat));
        }
        if !(-180.0..=180.0).contains(&lng) {
            return Err(InvalidCoordinate::LngOutOfRange(lng));
        }
        Ok(LatLng { lat, lng })
    }

    pub fn lat(&self) -> f64 {
        self.lat
    }

    pub fn lng(&self) -> f64 {
        self.lng
    }

    /// Great-circle distance in metres.
    pub fn distance_m(&self, other: &LatLng) -> f64 {
        Haversine.distance(
            Point::new(self.lng, self.lat),
            Point::new(other.lng, other.lat),
        )
    }

    /// The point on the unit sphere (x towards lng 0 on the equator, z towards the north pole).
    pub fn unit_vector(&self) -> [f64; 3] {
        let (lat, lng) = (self.lat.to_radians(), self.lng.to_radians());
        [lat.cos() * lng.cos(), lat.cos() * lng.sin(), lat.sin()]
    }

    /// Initial great-circle bearing towards `other`, in degrees from north, [0, 360).
    pub fn bearing_to(&self, other: &LatLng) -> f64 {
        let (lat1, lat2) = (self.lat.to_radians(), other.lat.to_radians());
        let delta_lng = (other.lng - self.lng).to_radians();
        let y = delta_lng.sin() * lat2.cos();
        let x = lat1.cos() * lat2.sin() - lat1.sin() * lat2.cos() * delta_lng.cos();
        y.atan2(x).to_degrees().rem_euclid(360.0)
    }

    /// The point `distance_m` away along `bearing_deg` (0 = north, 90 = east).
    pub fn destination(&self, bearing_deg: f64, distance_m: f64) -> LatLng {
        let angle = distance_m / EARTH_RADIUS_M;
        let bearing = bearing_deg.to_radians();
        let (lat1, lng1) = (self.lat.to_radians(), self.lng.to_radians());
        let lat2 = (lat1.sin() * angle.cos() + lat1.cos() * angle.sin() * bearing.cos()).asin();
        let lng2 = lng1
            + (bearing.sin() * angle.sin() * lat1.cos())
                .atan2(angle.cos() - lat1.sin() * lat2.sin());
        // Normalise into [-180, 180); both values are finite and in range by construction.
        let lng2 = (lng2.to_degrees() + 540.0).rem_euclid(360.0) - 180.0;
        LatLng {
            lat: lat2.to_degrees().clamp(-90.0, 90.0),
            lng: lng2,
        }
    }
}

/// Chord length on the unit sphere spanning a great-circle distance of `distance_m`.
pub fn chord_for_distance_m(distance_m: f64) -> f64 {
    let angle = (distance_m / EARTH_RADIUS_M).min(std::f64::consts::PI);
    2.0 * (angle / 2.0).sin()
}

/// Great-circle distance in metres for a chord length on the unit sphere.
pub fn distance_m_for_chord(chord: f64) -> f64 {
    let half = (chord / 2.0).clamp(0.0, 1.0);
    // Below 10⁻³ (13 km) asin's series to x⁷ is exact in double precision (the next term
    // is under x⁹ ≈ 10⁻²⁷ of x), and takes no call into libm: the nearest-driver query
    // converts a chord per driver it answers with.
    let angle = if half < 1e-3 {
        let square = half * half;
        half * (1.0 + square * (1.0 / 6.0 + square * (3.0 / 40.0 + square * (5.0 / 112.0))))
    } else {
        half.asin()
    };
    2.0 * angle * EARTH_RADIUS_M
}

/// Squared straight-line distance between two 3-D points.
pub fn squared_distance(a: &[f64; 3], b: &[f64; 3]) -> f64 {
    let d = [a[0] - b[0], a[1] - b[1], a[2] - b[2]];
    d[0] * d[0] + d[1] * d[1] + d[2] * d[2]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(lat: f64, lng: f64) -> LatLng {
        LatLng::new(lat, lng).unwrap()
    }

    #[test]
    fn rejects_bad_coordinates() {
        assert_eq!(
            LatLng::new(f64::NAN, 0.0),
            Err(InvalidCoordinate::NotFinite)
        );
        assert_eq!(
            LatLng::new(0.0, f64::INFINITY),
            Err(InvalidCoordinate::NotFinite)
        );
        assert!(matches!(
            LatLng::new(90.0001, 0.0),
            Err(InvalidCoordinate::LatOutOfRange(_))
        ));
        assert!(matches!(
            LatLng::new(0.0, -180.5),
            Err(InvalidCoordinate::LngOutOfRange(_))
        ));
        assert!(LatLng::new(-90.0, 180.0).is_ok());
    }

    #[test]
    fn deserialization_validates() {
        assert!(serde_json::from_str::<LatLng>(r#"{"lat": 37.5, "lng": 127.0}"#).is_ok());
        assert!(serde_json::from_str::<LatLng>(r#"{"lat": 137.5, "lng": 127.0}"#).is_err());
        assert!(serde_json::from_str::<LatLng>(r#"{"lat": "x", "lng": 127.0}"#).is_err());
        assert!(serde_json::from_str::<LatLng>(r#"{"lat": 37.5}"#).is_err());
    }

    #[test]
    fn gangnam_to_city_hall_is_about_nine_km() {
        let gangnam = p(37.4979, 127.0276);
        let city_hall = p(37.5663, 126.9779);
        let d = gangnam.distance_m(&city_hall);
        assert!((8_500.0..9_000.0).contains(&d), "{d}");
    }

    #[test]
    fn chord_round_trips_and_orders_like_great_circle() {
        for d in [1.0, 150.0, 3_000.0, 10_000.0, 1_000_000.0] {
            let back = distance_m_for_chord(chord_for_distance_m(d));
            assert!((back - d).abs() < 1e-6 * d.max(1.0), "{d} -> {back}");
        }
        let origin = p(37.5, 127.0);
        let a = origin.destination(10.0, 1_000.0);
        let b = origin.destination(200.0, 2_000.0);
        let chord_a = squared_distance(&origin.unit_vector(), &a.unit_vector()).sqrt();
        let chord_b = squared_distance(&origin.unit_vector(), &b.unit_vector()).sqrt();
        assert!(chord_a < chord_b);
        assert!((distance_m_for_chord(chord_a) - origin.distance_m(&a)).abs() < 0.01);
    }

    #[test]
    fn short_chords_convert_as_asin_does() {
        // The series below 10⁻³ and asin above it, on both sides of the switch.
        for half in [1e-9, 1e-6, 2.4e-4, 9.99e-4, 1e-3, 1.01e-3] {
            let by_asin = 2.0 * f64::asin(half) * EARTH_RADIUS_M;
            let converted = distance_m_for_chord(2.0 * half);
            assert!(
                (converted - by_asin).abs() <= 4.0 * f64::EPSILON * by_asin,
                "{half}: {converted} vs {by_asin}"
            );
        }
        assert_eq!(distance_m_for_chord(0.0), 0.0);
    }

    #[test]
    fn antimeridian_neighbours_are_close() {
        let west = p(0.0, 179.9999);
        let east = p(0.0, -179.9999);
        let chord = squared_distance(&west.unit_vector(), &east.unit_vector()).sqrt();
        assert!(distance_m_for_chord(chord) < 30.0);
        assert!(west.distance_m(&east) < 30.0);
    }

    #[test]
    fn bearing_points_the_way_destination_goes() {
        let origin = p(37.5, 127.0);
        for bearing in [0.0, 45.0, 135.0, 270.0] {
            let target = origin.destination(bearing, 2_000.0);
            assert!(
                (origin.bearing_to(&target) - bearing).abs() < 0.01,
                "{bearing}"
            );
        }
    }

    #[test]
    fn destination_moves_the_requested_distance() {
        let origin = p(37.5, 127.0);
        for bearing in [0.0, 45.0, 90.0, 180.0, 270.0] {
            let moved = origin.destination(bearing, 500.0);
            assert!((origin.distance_m(&moved) - 500.0).abs() < 0.5);
        }
    }
}
