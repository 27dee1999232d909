//! The book's rules, by hand: no database, no clock but the one the test passes.
use super::*;
use crate::{dispatch::rank::StraightLineEta, fleet::DriverStatus, trip::Money};

const OFFER_TIMEOUT: Duration = Duration::from_secs(15);
const DEADLINE: Duration = Duration::from_secs(120);

fn policy() -> Policy {
    Policy {
        radii_m: vec![3_000.0, 6_000.0],
        max_candidates: 8,
        offer_timeout: OFFER_TIMEOUT,
        deadline: DEADLINE,
        retry: Duration::from_secs(1),
        batch: None,
    }
}

fn book() -> Book {
    Book::new(
        policy(),
        Box::new(StraightLineEta {
            detour_factor: 1.3,
            speed_mps: 7.0,
        }),
    )
}

fn pickup() -> LatLng {
    LatLng::new(37.5, 127.0).unwrap()
}

fn fleet(drivers: &[(&str, f64)], now: Instant) -> FleetIndex {
    let mut fleet = FleetIndex::new(Duration::from_secs(30));
    for (id, metres_north) in drivers {
        let key = fleet.connect(id, None, now, Timestamp(1));
        fleet.ping(&key, pickup().destination(0.0, *metres_north), None, now);
    }
    fleet
}

fn trip(id: &str, wall: Timestamp) -> Trip {
    Trip {
        id: id.into(),
        state: TripState::Requested,
        seq: 1,
        passenger_id: "psg".into(),
        driver_id: None,
        pickup: pickup(),
        dropoff: pickup().destination(90.0, 3_000.0),
        fare_estimate: Money {
            amount: 9_000,
            currency: "KRW".into(),
        },
        fare: None,
        requested_at: wall,
        updated_at: wall,
    }
}

fn offers(effects: &[Effect]) -> Vec<(&str, &str)> {
    effects
        .iter()
        .filter_map(|effect| match effect {
            Effect::Offer { offer, .. } => Some((offer.trip_id.as_str(), offer.driver_id.as_str())),
            _ => None,
        })
        .collect()
}

fn closed(offer: &NewOffer, outcome: OfferOutcome) -> ClosedOffer {
    ClosedOffer {
        offer_id: offer.id.clone(),
        trip_id: offer.trip_id.clone(),
        driver_id: offer.driver_id.clone(),
        outcome,
        reason: None,
    }
}

fn first_offer(effects: &[Effect]) -> NewOffer {
    effects
        .iter()
        .find_map(|effect| match effect {
            Effect::Offer { offer, .. } => Some(offer.clone()),
            _ => None,
        })
        .expect("an offer")
}

#[test]
fn the_nearest_driver_gets_one_offer_and_a_lapse_moves_on_never_back() {
    let (now, wall) = (Instant::now(), Timestamp(1_000_000));
    let fleet = fleet(&[("near", 100.0), ("far", 900.0)], now);
    let mut book = book();
    book.submit(&trip("t", wall), [], now, wall);

    let (effects, next) = book.step(&fleet, now, wall);
    assert_eq!(offers(&effects), [("t", "near")]);
    assert_eq!(
        next,
        now + OFFER_TIMEOUT,
        "next wake is the offer's deadline"
    );
    let offer = first_offer(&effects);
    assert_eq!(offer.expires_at, wall.plus_ms(15_000));
    assert!(matches!(effects[0], Effect::Offer { first_after: Some(d), .. } if d.is_zero()));

    // Nothing more until it lapses: one offer at a time per trip.
    let (effects, _) = book.step(&fleet, now + OFFER_TIMEOUT - Duration::from_millis(1), wall);
    assert!(effects.is_empty(), "{effects:?}");
    let (effects, _) = book.step(&fleet, now + OFFER_TIMEOUT, wall);
    assert_eq!(
        effects,
        [Effect::Lapse {
            offer_id: offer.id.clone()
        }]
    );
    book.closed(
        &offer.id,
        Some(&closed(&offer, OfferOutcome::Expired)),
        now + OFFER_TIMEOUT,
    );
    let (effects, _) = book.step(&fleet, now + OFFER_TIMEOUT, wall);
    assert_eq!(offers(&effects), [("t", "far")]);
    assert!(matches!(
        effects[0],
        Effect::Offer {
            first_after: None,
            ..
        }
    ));
}

#[test]
fn a_driver_never_holds_two_offers_and_a_decline_frees_it_for_others() {
    let (now, wall) = (Instant::now(), Timestamp(1_000_000));
    let fleet = fleet(&[("only", 100.0)], now);
    let mut book = book();
    book.submit(&trip("a", wall), [], now, wall);
    book.submit(&trip("b", wall), [], now, wall);
    let (effects, _) = book.step(&fleet, now, wall);
    assert_eq!(offers(&effects).len(), 1, "{effects:?}");
    let offer = first_offer(&effects);
    assert_eq!(book.offer_of("only"), Some(offer.id.as_str()));
    let (effects, _) = book.step(&fleet, now + Duration::from_secs(2), wall);
    assert!(offers(&effects).is_empty());

    book.offer_closed(&closed(&offer, OfferOutcome::Declined), now);
    let (effects, _) = book.step(&fleet, now, wall);
    let other = if offer.trip_id == "a" { "b" } else { "a" };
    assert_eq!(
        offers(&effects),
        [(other, "only")],
        "declined trip never again, the other at once"
    );
}

#[test]
fn a_trip_expires_at_its_deadline_and_a_late_driver_still_gets_it_before() {
    let (now, wall) = (Instant::now(), Timestamp(1_000_000));
    let mut book = book();
    book.submit(&trip("t", wall), [], now, wall);
    let empty = FleetIndex::new(Duration::from_secs(30));
    let (effects, next) = book.step(&empty, now, wall);
    assert!(effects.is_empty());
    assert_eq!(next, now + Duration::from_secs(1), "retried every second");

    let late = now + DEADLINE - Duration::from_secs(1);
    let fleet = fleet(&[("late", 50.0)], late);
    book.driver_available();
    let (effects, _) = book.step(&fleet, late, wall);
    assert_eq!(offers(&effects), [("t", "late")]);
    let (effects, _) = book.step(&fleet, now + DEADLINE, wall);
    assert_eq!(
        effects,
        [Effect::Expire {
            trip_id: "t".into()
        }]
    );
    let (effects, _) = book.step(&fleet, now + DEADLINE, wall);
    assert!(effects.is_empty(), "one expiry in flight at a time");
    book.expired("t", true);
    assert_eq!(book.pending_trips(), 0);
    assert_eq!(book.open_offers(), 0);
    assert_eq!(book.offer_of("late"), None);
}

/// After a failover the new leader adopts the open offer: its deadline stands and the
/// trip's deadline counts from when it was requested.
#[test]
fn adopted_offers_keep_their_deadlines() {
    let (now, wall) = (Instant::now(), Timestamp(1_000_000));
    let fleet = fleet(&[("held", 100.0), ("free", 200.0)], now);
    let mut book = book();
    let requested = Timestamp(wall.millis() - 100_000);
    book.submit(&trip("t", requested), [], now, wall);
    let record = OfferRecord {
        offer: NewOffer {
            id: "ofr_old".into(),
            trip_id: "t".into(),
            driver_id: "held".into(),
            made_at: Timestamp(wall.millis() - 5_000),
            expires_at: Timestamp(wall.millis() + 10_000),
            pickup_distance_m: 100.0,
            pickup_eta_s: 19.0,
            rank: 1,
            candidates: 2,
            radius_m: 3_000.0,
            batch: None,
        },
        epoch: 1,
        state: crate::store::OfferState::Open,
        closed_at: None,
        withdraw_reason: None,
    };
    book.adopt(&record, now, wall);
    let (effects, next) = book.step(&fleet, now, wall);
    assert!(effects.is_empty(), "{effects:?}");
    assert_eq!(next, now + Duration::from_secs(10));
    let (effects, _) = book.step(&fleet, now + Duration::from_secs(10), wall);
    assert_eq!(
        effects,
        [Effect::Lapse {
            offer_id: "ofr_old".into()
        }]
    );
    let (effects, _) = book.step(&fleet, now + Duration::from_secs(20), wall);
    assert_eq!(
        effects,
        [Effect::Expire {
            trip_id: "t".into()
        }],
        "requested 120 s ago"
    );
}

/// The periodic reload: what the store says wins; what the book knows beyond it (a
/// first offer's time) stays.
#[test]
fn sync_follows_the_store_and_keeps_what_it_knows() {
    let (now, wall) = (Instant::now(), Timestamp(1_000_000));
    let fleet = fleet(&[("a", 100.0), ("b", 200.0), ("c", 300.0)], now);
    let mut book = book();
    book.submit(&trip("kept", wall), [], now, wall);
    book.submit(&trip("settled", wall), [], now, wall);
    let (effects, _) = book.step(&fleet, now, wall);
    assert_eq!(offers(&effects).len(), 2);
    let kept_offer = effects
        .iter()
        .find_map(|e| match e {
            Effect::Offer { offer, .. } if offer.trip_id == "kept" => Some(offer.clone()),
            _ => None,
        })
        .unwrap();
    // The store: "settled" was accepted elsewhere (news lost), its offer closed; "kept"
    // waits with its offer lapsed meanwhile; a new trip appeared.
    let waiting = vec![
        (trip("kept", wall), vec![]),
        (trip("new", wall), vec!["b".to_string()]),
    ];
    book.sync(&waiting, &[], now, wall);
    assert_eq!(book.pending_trips(), 2);
    assert_eq!(
        book.open_offers(),
        0,
        "offers the store does not hold are forgotten"
    );
    assert_eq!(book.offer_of(&kept_offer.driver_id), None);
    let (effects, _) = book.step(&fleet, now, wall);
    let made = offers(&effects);
    assert_eq!(made.len(), 2, "both waiting trips offered again: {made:?}");
    assert!(
        !made.contains(&("new", "b")),
        "the new trip's exclusion held: {made:?}"
    );
    assert!(
        effects.iter().all(|e| !matches!(e, Effect::Offer { offer, first_after: Some(_), .. } if offer.trip_id == "kept")),
        "the kept trip was offered before: not a first offer"
    );
}

#[test]
fn refusals_free_the_driver_and_say_when_the_book_is_out_of_step() {
    let (now, wall) = (Instant::now(), Timestamp(1_000_000));
    let mut fleet = fleet(&[("d", 100.0)], now);
    let mut book = book();
    book.submit(&trip("t", wall), [], now, wall);
    let (effects, _) = book.step(&fleet, now, wall);
    let offer = first_offer(&effects);
    book.offer_refused(&offer.id, Refusal::Conflict, now);
    assert!(book.out_of_step);
    assert_eq!(book.offer_of("d"), None);
    let (effects, _) = book.step(&fleet, now + Duration::from_secs(1), wall);
    let offer = first_offer(&effects);
    book.offer_refused(&offer.id, Refusal::TripGone, now);
    assert_eq!(book.pending_trips(), 0);
    // A driver going offline has its offer withdrawn.
    book.submit(&trip("w", wall), [], now, wall);
    let (effects, _) = book.step(&fleet, now + Duration::from_secs(2), wall);
    let offer = first_offer(&effects);
    book.driver_unavailable("d");
    let (effects, _) = book.step(&fleet, now + Duration::from_secs(2), wall);
    assert_eq!(
        effects,
        [Effect::Withdraw {
            offer_id: offer.id.clone()
        }]
    );
    book.closed(
        &offer.id,
        Some(&closed(&offer, OfferOutcome::Withdrawn)),
        now,
    );
    assert_eq!(book.offer_of("d"), None);
    book.trip_closed("w");
    // Offline drivers are no candidates at all.
    book.submit(&trip("u", wall), [], now, wall);
    fleet.set_status("d", DriverStatus::Offline, now);
    let (effects, _) = book.step(&fleet, now + Duration::from_secs(2), wall);
    assert!(offers(&effects).is_empty());
}

fn batch_book(window: Duration) -> Book {
    let mut policy = policy();
    policy.batch = Some(BatchPolicy {
        window,
        max_trips: 200,
    });
    Book::new(
        policy,
        Box::new(StraightLineEta {
            detour_factor: 1.3,
            speed_mps: 7.0,
        }),
    )
}

fn trip_at(id: &str, wall: Timestamp, metres_north: f64) -> Trip {
    let mut trip = trip(id, wall);
    trip.pickup = pickup().destination(0.0, metres_north);
    trip
}

/// Trip `a` at the pickup, `b` 1.5 km north of it; driver `x` between them (700 m from
/// `a`, 800 m from `b`), driver `y` 900 m south of `a`. Nearest-first gives `a` the
/// driver `x` and sends `y` 2.4 km to `b` (3.1 km in all); the batch gives 1.7 km.
fn the_trap(book: &mut Book, now: Instant, wall: Timestamp) -> FleetIndex {
    let fleet = fleet(&[("x", 700.0), ("y", -900.0)], now);
    book.submit(
        &trip_at("a", Timestamp(wall.millis() - 10), 0.0),
        [],
        now,
        wall,
    );
    book.submit(&trip_at("b", wall, 1_500.0), [], now, wall);
    fleet
}

/// Requests arriving one after the other, each offered at once: `a` takes `x`.
#[test]
fn greedy_falls_into_the_nearest_first_trap() {
    let (now, wall) = (Instant::now(), Timestamp(1_000_000));
    let mut book = book();
    let fleet = fleet(&[("x", 700.0), ("y", -900.0)], now);
    book.submit(&trip_at("a", wall, 0.0), [], now, wall);
    let (first, _) = book.step(&fleet, now, wall);
    let later = now + Duration::from_millis(200);
    book.submit(&trip_at("b", wall, 1_500.0), [], later, wall);
    let (second, _) = book.step(&fleet, later, wall);
    assert_eq!(offers(&first), [("a", "x")]);
    assert_eq!(offers(&second), [("b", "y")]);
}

#[test]
fn a_batch_waits_for_its_window_then_assigns_the_least_total_pickup() {
    let window = Duration::from_millis(1_000);
    let (now, wall) = (Instant::now(), Timestamp(1_000_000));
    let mut book = batch_book(window);
    let fleet = the_trap(&mut book, now, wall);

    let (effects, next) = book.step(&fleet, now, wall);
    assert!(offers(&effects).is_empty(), "the window collects first");
    assert_eq!(next, now + window);

    let (effects, _) = book.step(&fleet, now + window, wall.plus_ms(1_000));
    let mut made = offers(&effects);
    made.sort();
    assert_eq!(made, [("a", "y"), ("b", "x")]);
    for effect in &effects {
        let Effect::Offer {
            offer, first_after, ..
        } = effect
        else {
            panic!("only offers: {effect:?}")
        };
        let batch = offer.batch.expect("a batched offer says so");
        assert_eq!((batch.window_ms, batch.size), (1_000, 2));
        let waited = first_after.expect("a first offer");
        assert!(waited >= window && waited <= window + Duration::from_millis(10));
        assert!((offer.pickup_eta_s - offer.pickup_distance_m * 1.3 / 7.0).abs() < 1e-6);
    }
    // `a` got its second-best: the log says so.
    let a = effects
        .iter()
        .find_map(|e| match e {
            Effect::Offer { offer, .. } if offer.trip_id == "a" => Some(offer),
            _ => None,
        })
        .unwrap();
    assert_eq!((a.rank, a.candidates), (2, 2));
}

#[test]
fn a_batch_keeps_offers_exclusive_and_exclusions() {
    let window = Duration::from_millis(500);
    let (now, wall) = (Instant::now(), Timestamp(1_000_000));
    let mut book = batch_book(window);
    let fleet = fleet(&[("near", 100.0), ("far", 900.0)], now);
    book.submit(&trip("t", wall), ["near".to_string()], now, wall);
    book.submit(&trip_at("u", wall, 50.0), [], now, wall);
    let (effects, _) = book.step(&fleet, now, wall);
    assert!(offers(&effects).is_empty());
    let (effects, _) = book.step(&fleet, now + window, wall);
    let mut made = offers(&effects);
    made.sort();
    assert_eq!(made, [("t", "far"), ("u", "near")]);
    // Both drivers are reserved now: a new trip gets nothing until one is free.
    book.submit(&trip_at("v", wall, 10.0), [], now + window, wall);
    let (effects, _) = book.step(&fleet, now + window * 2, wall);
    assert!(offers(&effects).is_empty());
}

/// A trip never waits more than one window past the moment a driver became free near it.
#[test]
fn a_waiting_trip_is_matched_within_one_window_of_a_driver_freeing_up() {
    let window = Duration::from_millis(1_000);
    let start = Instant::now();
    let wall = Timestamp(1_000_000);
    let mut book = batch_book(window);
    let empty = fleet(&[], start);
    book.submit(&trip("t", wall), [], start, wall);
    let mut now = start;
    // Nobody around for 2.3 s: windows close without an offer.
    while now < start + Duration::from_millis(2_300) {
        let (effects, next) = book.step(&empty, now, wall);
        assert!(offers(&effects).is_empty());
        assert!(next > now && next <= now + window, "{:?}", next - now);
        now = next.min(start + Duration::from_millis(2_300));
    }
    let freed_at = now;
    let fleet = fleet(&[("free", 300.0)], freed_at);
    book.driver_available();
    loop {
        let (effects, next) = book.step(&fleet, now, wall);
        if !offers(&effects).is_empty() {
            assert_eq!(offers(&effects), [("t", "free")]);
            break;
        }
        assert!(next > now);
        now = next;
    }
    assert!(now - freed_at <= window, "waited {:?}", now - freed_at);
}
