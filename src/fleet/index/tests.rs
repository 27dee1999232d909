//! The fleet index against brute force and by hand.
use super::*;
use rand::{RngExt, SeedableRng, rngs::StdRng};
use std::collections::HashMap;

const STALE: Duration = Duration::from_secs(30);

fn seoul() -> LatLng {
    LatLng::new(37.5665, 126.9780).unwrap()
}

fn online(index: &mut FleetIndex, id: &str, at: LatLng, now: Instant) {
    let key = index.connect(id, None, now, Timestamp(1));
    index.ping(&key, at, None, now).unwrap();
}

/// A ping by the driver's id, as a socket would send it with the key it got on connect.
trait PingById {
    fn ping_id(
        &mut self,
        id: &str,
        at: LatLng,
        heading_deg: Option<f64>,
        now: Instant,
    ) -> Option<PingOutcome>;
}

impl PingById for FleetIndex {
    fn ping_id(
        &mut self,
        id: &str,
        at: LatLng,
        heading_deg: Option<f64>,
        now: Instant,
    ) -> Option<PingOutcome> {
        let key = self.key(id)?;
        self.ping(&key, at, heading_deg, now)
    }
}

#[test]
fn nearest_matches_brute_force_while_drivers_move() {
    let now = Instant::now();
    let mut index = FleetIndex::new(STALE);
    let mut rng = StdRng::seed_from_u64(7);
    let mut positions = HashMap::new();
    for i in 0..2_000 {
        let p = seoul().destination(
            rng.random_range(0.0..360.0),
            rng.random_range(0.0..15_000.0),
        );
        let id = format!("d{i}");
        online(&mut index, &id, p, now);
        positions.insert(id, p);
    }
    for round in 0..5 {
        // Move everyone a little (some inside their box, some out of it).
        for (id, p) in positions.iter_mut() {
            *p = p.destination(rng.random_range(0.0..360.0), rng.random_range(0.0..400.0));
            index.ping_id(id, *p, None, now).unwrap();
        }
        let pickup = seoul().destination(round as f64 * 70.0, 2_000.0);
        let found = index.nearest_available(pickup, 3_000.0, 8, now, |_| false);
        let mut expected: Vec<(f64, &String)> = positions
            .iter()
            .map(|(id, p)| (pickup.distance_m(p), id))
            .filter(|(d, _)| *d <= 3_000.0)
            .collect();
        expected.sort_by(|a, b| a.0.total_cmp(&b.0));
        expected.truncate(8);
        let found_ids: Vec<&str> = found.iter().map(|c| &*c.driver_id).collect();
        let expected_ids: Vec<&str> = expected.iter().map(|(_, id)| id.as_str()).collect();
        assert_eq!(found_ids, expected_ids, "round {round}");
        for (c, (d, _)) in found.iter().zip(&expected) {
            assert!((c.distance_m - d).abs() < 0.5, "{} vs {d}", c.distance_m);
        }
    }
}

#[test]
fn only_dispatchable_drivers_are_candidates() {
    let now = Instant::now();
    let mut index = FleetIndex::new(STALE);
    let near = seoul().destination(0.0, 100.0);
    for id in [
        "free",
        "offered",
        "busy",
        "offline",
        "excluded",
        "no_position",
    ] {
        if id == "no_position" {
            index.connect(id, None, now, Timestamp(1));
        } else {
            online(&mut index, id, near, now);
        }
    }
    index.set_offer("offered", "ofr_1", true);
    index.set_trip("busy", Some("trp_1".into()));
    index.set_status("offline", DriverStatus::Offline, now);
    online(&mut index, "dropped", near, now);
    index.disconnect("dropped");
    // Offers are the dispatcher's to exclude: the index only knows who could take one.
    let found = index.nearest_available(seoul(), 3_000.0, 8, now, |id| {
        id == "excluded" || id == "offered"
    });
    let ids: Vec<&str> = found.iter().map(|c| &*c.driver_id).collect();
    assert_eq!(
        ids,
        ["free"],
        "no trip, available, positioned and connected"
    );
    assert!((found[0].distance_m - 100.0).abs() < 0.5);

    let states: HashMap<String, DriverState> = index
        .views(now)
        .into_iter()
        .map(|v| (v.id, v.state))
        .collect();
    assert_eq!(states["offered"], DriverState::Offered);
    assert_eq!(states["busy"], DriverState::Busy);
    assert_eq!(states["offline"], DriverState::Offline);
    assert_eq!(states["dropped"], DriverState::Stale);

    index.set_offer("offered", "ofr_1", false);
    assert_eq!(index.offer_of("offered"), None);
    index.set_trip("busy", None);
    let found = index.nearest_available(seoul(), 3_000.0, 8, now, |_| false);
    assert_eq!(found.len(), 4);
}

#[test]
fn radius_bounds_the_search() {
    let now = Instant::now();
    let mut index = FleetIndex::new(STALE);
    online(&mut index, "far", seoul().destination(90.0, 4_000.0), now);
    assert!(
        index
            .nearest_available(seoul(), 3_000.0, 8, now, |_| false)
            .is_empty()
    );
    assert_eq!(
        index
            .nearest_available(seoul(), 6_000.0, 8, now, |_| false)
            .len(),
        1
    );
}

#[test]
fn silent_drivers_go_stale_then_offline_after_their_socket_drops() {
    let start = Instant::now();
    let mut index = FleetIndex::new(STALE);
    online(&mut index, "d", seoul(), start);
    let later = start + Duration::from_secs(31);
    assert!(
        index
            .nearest_available(seoul(), 3_000.0, 8, later, |_| false)
            .is_empty()
    );
    assert_eq!(index.view("d", later).unwrap().state, DriverState::Stale);
    assert!(
        index
            .sweep_offline(later + Duration::from_secs(60), Duration::from_secs(60))
            .is_empty(),
        "a connected driver is not swept"
    );
    index.disconnect("d");
    assert!(
        index
            .sweep_offline(start + Duration::from_secs(59), Duration::from_secs(60))
            .is_empty(),
        "inside the grace period"
    );
    assert_eq!(
        index.sweep_offline(start + Duration::from_secs(61), Duration::from_secs(60)),
        ["d"]
    );
    assert!(index.is_empty());
    assert_eq!(
        index.pages.size(),
        (0, 0),
        "no row, and the empty page swept"
    );
}

#[test]
fn odometer_counts_only_a_started_trip() {
    let now = Instant::now();
    let mut index = FleetIndex::new(STALE);
    online(&mut index, "d", seoul(), now);
    index.set_trip("d", Some("trp".into()));
    assert_eq!(index.odometer_m("d"), None);
    index.start_odometer("d", now);
    let mut p = seoul();
    for second in 1..=10 {
        p = p.destination(90.0, 50.0);
        index.ping_id("d", p, None, now + Duration::from_secs(second));
    }
    let (metres, implausible) = index.odometer_m("d").unwrap();
    assert!((metres - 500.0).abs() < 1.0, "{metres}");
    assert_eq!(implausible, 0);
}

/// A spoofed jump (and the way back from it) adds nothing; pings that arrive in a bunch
/// lose nothing, since each is measured from the last one counted.
#[test]
fn odometer_leaves_out_impossible_speeds() {
    let now = Instant::now();
    let mut index = FleetIndex::new(STALE);
    online(&mut index, "d", seoul(), now);
    index.set_trip("d", Some("trp".into()));
    index.start_odometer("d", now);
    let antipode = LatLng::new(-seoul().lat(), seoul().lng() - 180.0).unwrap();
    index.ping_id("d", antipode, None, now + Duration::from_secs(4));
    let near = seoul().destination(0.0, 200.0);
    index.ping_id("d", near, None, now + Duration::from_secs(8));
    // Two pings delivered together: the second is too fast from the first, but is
    // counted from there once the next one comes.
    let a = near.destination(0.0, 100.0);
    index.ping_id("d", a, None, now + Duration::from_millis(12_000));
    index.ping_id(
        "d",
        a.destination(0.0, 100.0),
        None,
        now + Duration::from_millis(12_001),
    );
    index.ping_id(
        "d",
        a.destination(0.0, 300.0),
        None,
        now + Duration::from_secs(20),
    );
    let (metres, implausible) = index.odometer_m("d").unwrap();
    assert!((metres - 600.0).abs() < 1.0, "{metres}");
    assert_eq!(implausible, 2, "the jump, and the bunched ping");
}

#[test]
fn headings_are_kept_in_a_circle() {
    assert_eq!(
        normal_heading(Some(1e308)),
        Some(1e308f64.rem_euclid(360.0))
    );
    assert_eq!(normal_heading(Some(-90.0)), Some(270.0));
    assert_eq!(normal_heading(Some(f64::NAN)), None);
    assert!(normal_heading(Some(1e308)).is_some_and(|h| (0.0..360.0).contains(&h)));
}

/// Another node's records: the node holding a driver is believed, older news from a
/// node the driver left is not, and a driver moving here supersedes nothing there.
#[test]
fn records_from_other_nodes_follow_the_newest_connection() {
    let now = Instant::now();
    let mut index = FleetIndex::new(STALE);
    let b: Arc<str> = Arc::from("node_b");
    let c: Arc<str> = Arc::from("node_c");
    let record = |connected, since, gone| DriverRecord {
        driver_id: "d".into(),
        connected,
        connected_since: Timestamp(since),
        status: DriverStatus::Available,
        position: Some(seoul()),
        heading_deg: None,
        silent_ms: 0,
        gone,
    };
    let (availability, superseded) = index.apply_record(&b, &record(true, 10, false), now);
    assert!(availability.gained && !superseded);
    assert_eq!(
        index.view("d", now).unwrap().node.as_deref(),
        Some("node_b")
    );
    // The driver reconnects on node c; node b's late "disconnected" is old news.
    index.apply_record(&c, &record(true, 20, false), now);
    let (availability, _) = index.apply_record(&b, &record(false, 10, false), now);
    assert_eq!(availability, Availability::default());
    assert!(index.dispatchable("d", now));
    // Then it connects here: node c's socket is the older one.
    index.connect("d", None, now, Timestamp(30));
    assert_eq!(index.view("d", now).unwrap().node, None);
    let (_, superseded) = index.apply_record(&c, &record(true, 20, false), now);
    assert!(!superseded, "older than our connection: ignored");
    let (_, superseded) = index.apply_record(&c, &record(true, 40, false), now);
    assert!(superseded, "newer than ours: the driver moved to node c");
    // Node c goes silent: its drivers have no live socket.
    assert_eq!(index.node_lost("node_c"), ["d"]);
    assert!(!index.dispatchable("d", now));
    index.apply_record(&c, &record(false, 40, true), now);
    assert!(!index.is_online("d"));
}

#[test]
fn changes_are_reported_once_per_reader_version() {
    let now = Instant::now();
    let mut index = FleetIndex::new(STALE);
    online(&mut index, "a", seoul(), now);
    online(&mut index, "b", seoul(), now);
    let start = index.version();
    assert!(index.changed_since(start, now).unwrap().drivers.is_empty());
    index.ping_id("a", seoul().destination(0.0, 10.0), None, now);
    let changes = index.changed_since(start, now).unwrap();
    let ids: Vec<&str> = changes.drivers.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, ["a"]);
    index.disconnect("b");
    index.sweep_offline(now + Duration::from_secs(120), Duration::from_secs(60));
    let later = index.changed_since(changes.version, now).unwrap();
    assert_eq!(later.removed, ["b"]);
    assert!(later.drivers.iter().all(|d| d.id != "b"));
}

/// Every slot's place names a row of that slot, every row is some slot's, and a placed
/// driver's answer line says what its slot does.
fn assert_consistent(index: &FleetIndex) {
    let mut placed = 0;
    for (i, slot) in index.slots.iter().enumerate() {
        let Some(slot) = slot else { continue };
        if let Some(place) = slot.place {
            let (row_slot, squared) = index.pages.row(place, &slot.unit);
            assert_eq!(row_slot as usize, i);
            // The row's single-precision offset keeps the position to a millimetre.
            let chord_of_a_millimetre = 1e-3 / crate::geometry::EARTH_RADIUS_M;
            assert!(squared.sqrt() < chord_of_a_millimetre, "{squared}");
            let answer = &index.answers[i];
            assert_eq!(
                (answer.id.as_str(), answer.position, answer.last_ping),
                (&*slot.id, slot.position, slot.last_ping)
            );
            placed += 1;
        }
    }
    assert_eq!(index.pages.size().0, placed);
}

#[test]
fn nearest_matches_brute_force_in_a_dense_mixed_fleet() {
    let start = Instant::now();
    let mut index = FleetIndex::new(STALE);
    let mut rng = StdRng::seed_from_u64(11);
    // 3,000 drivers within 2 km (~240 per km², a city centre), in every state.
    let mut positions: Vec<LatLng> = Vec::new();
    for i in 0..3_000 {
        let p = seoul().destination(
            rng.random_range(0.0..360.0),
            rng.random_range(0.0f64..1.0).sqrt() * 2_000.0,
        );
        online(&mut index, &format!("d{i}"), p, start);
        positions.push(p);
    }
    for round in 0..20u64 {
        let now = start + Duration::from_secs(round);
        for (i, p) in positions.iter_mut().enumerate() {
            let id = format!("d{i}");
            match rng.random_range(0..100) {
                // Most drive on (often into the next cell), some jump far.
                0..70 => *p = p.destination(rng.random_range(0.0..360.0), 40.0),
                70..72 => *p = seoul().destination(rng.random_range(0.0..360.0), 1_900.0),
                72..75 => {
                    let status = if rng.random_range(0..2) == 0 {
                        DriverStatus::Offline
                    } else {
                        DriverStatus::Available
                    };
                    index.set_status(&id, status, now);
                }
                75..77 => {
                    let trip = (rng.random_range(0..2) == 0).then(|| format!("t{i}"));
                    index.set_trip(&id, trip);
                }
                77..79 => index.disconnect(&id),
                79..81 => {
                    let trip = index.view(&id, now).unwrap().trip_id;
                    index.connect(&id, trip, now, Timestamp(2));
                }
                // Silent: goes stale in time.
                81..90 => continue,
                _ => {}
            }
            index.ping_id(&id, *p, None, now).unwrap();
        }
        assert_consistent(&index);
        let now = now + Duration::from_millis(500);
        for (pickup_m, k, radius) in [
            (0.0, 8, 3_000.0),
            (900.0, 3, 150.0),
            (1_500.0, 20, 800.0),
            (2_500.0, 8, 3_000.0),
        ] {
            let pickup = seoul().destination(round as f64 * 37.0, pickup_m);
            let excluded = |id: &str| id.ends_with('7');
            let found = index.nearest_available(pickup, radius, k, now, excluded);
            let mut expected: Vec<(f64, String)> = positions
                .iter()
                .enumerate()
                .map(|(i, p)| (pickup.distance_m(p), format!("d{i}")))
                .filter(|(d, id)| *d <= radius && !excluded(id) && index.dispatchable(id, now))
                .collect();
            expected.sort_by(|a, b| a.0.total_cmp(&b.0));
            expected.truncate(k);
            let found_ids: Vec<&str> = found.iter().map(|c| &*c.driver_id).collect();
            let expected_ids: Vec<&str> = expected.iter().map(|(_, id)| id.as_str()).collect();
            assert_eq!(
                found_ids, expected_ids,
                "round {round}, k {k}, radius {radius}"
            );
        }
    }
}

#[test]
fn nearest_reaches_across_the_antimeridian_and_over_a_pole() {
    let now = Instant::now();
    let mut index = FleetIndex::new(STALE);
    let east = LatLng::new(-16.5, 179.999).unwrap();
    let west = LatLng::new(-16.5, -179.999).unwrap();
    online(&mut index, "east", east, now);
    let found = index.nearest_available(west, 1_000.0, 8, now, |_| false);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!((found[0].distance_m - west.distance_m(&east)).abs() < 0.01);

    let pole = LatLng::new(89.9999, 0.0).unwrap();
    let over = LatLng::new(89.9999, 180.0).unwrap();
    online(&mut index, "over", over, now);
    let found = index.nearest_available(pole, 100.0, 8, now, |_| false);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(&*found[0].driver_id, "over");
}

#[test]
fn a_socket_key_pings_its_own_driver_even_after_its_slot_is_reused() {
    let now = Instant::now();
    let later = now + Duration::from_secs(60);
    let mut index = FleetIndex::new(STALE);
    let a = index.connect("a", None, now, Timestamp(1));
    index.ping(&a, seoul(), None, now).unwrap();
    assert_eq!(index.position("a"), Some(seoul()));

    // "a" goes offline for good; "b" takes its slot.
    index.disconnect("a");
    assert_eq!(index.sweep_offline(later, Duration::from_secs(10)), ["a"]);
    let b = index.connect("b", None, later, Timestamp(2));
    assert_eq!(b.slot, a.slot, "the freed slot is reused");
    // The stale key of "a" does not move "b", nor bring "a" back.
    let elsewhere = seoul().destination(90.0, 1_000.0);
    assert_eq!(index.ping(&a, elsewhere, None, later), None);
    assert_eq!(index.position("b"), None);
    assert!(!index.is_online("a"));

    // "a" comes back, into another slot: its old key still finds it, by its id.
    let again = index.connect("a", None, later, Timestamp(3));
    assert_ne!(again.slot, a.slot);
    index.ping(&a, elsewhere, None, later).unwrap();
    assert_eq!(index.position("a"), Some(elsewhere));
    assert_eq!(index.position("b"), None);
    let found = index.nearest_available(elsewhere, 100.0, 1, later, |_| false);
    assert_eq!(&*found[0].driver_id, "a");
    assert_consistent(&index);
}

#[test]
fn a_driver_in_the_nearest_corner_of_a_diagonal_cell_is_found() {
    // Cells in the corners of a query's box are skipped when they lie wholly outside its
    // reach: a driver just inside such a cell's corner nearest the pickup, asked for with
    // a radius a centimetre beyond it, must still be found.
    let now = Instant::now();
    let (lat_step, lng_step) = (pages::CELL_LAT_DEG, pages::CELL_LNG_DEG);
    for pickup in [seoul(), LatLng::new(-33.87, 151.21).unwrap()] {
        let (row, column) = (
            (pickup.lat() / lat_step).floor(),
            (pickup.lng() / lng_step).floor(),
        );
        for rows_away in [-5.0, -2.0, -1.0, 1.0, 2.0, 5.0] {
            for columns_away in [-5.0, -2.0, -1.0, 1.0, 2.0, 5.0] {
                let (r, c): (f64, f64) = (row + rows_away, column + columns_away);
                let lat = if rows_away > 0.0 {
                    r * lat_step + 1e-9
                } else {
                    (r + 1.0) * lat_step - 1e-9
                };
                let lng = if columns_away > 0.0 {
                    c * lng_step + 1e-9
                } else {
                    (c + 1.0) * lng_step - 1e-9
                };
                let driver = LatLng::new(lat, lng).unwrap();
                let mut index = FleetIndex::new(STALE);
                online(&mut index, "d", driver, now);
                let radius = pickup.distance_m(&driver) + 0.01;
                let found = index.nearest_available(pickup, radius, 1, now, |_| false);
                assert_eq!(
                    found.len(),
                    1,
                    "{rows_away} rows, {columns_away} columns away, {radius} m"
                );
            }
        }
    }
}
