//! The state machine, fares and timestamps, by hand.

use super::*;

fn trip() -> Trip {
    let p = LatLng::new(37.5, 127.0).unwrap();
    Trip {
        id: "trp_1".into(),
        state: TripState::Requested,
        seq: 1,
        passenger_id: "psg_1".into(),
        driver_id: None,
        pickup: p,
        dropoff: p,
        fare_estimate: Money {
            amount: 4_800,
            currency: "KRW".into(),
        },
        fare: None,
        requested_at: Timestamp(0),
        updated_at: Timestamp(0),
    }
}

fn run(changes: &[Change]) -> Result<Trip, InvalidTransition> {
    let mut t = trip();
    for (i, c) in changes.iter().enumerate() {
        t = t.apply(c, Timestamp(i as i64 + 1))?;
    }
    Ok(t)
}

fn accept() -> Change {
    Change::Accept {
        driver_id: "drv_1".into(),
    }
}

fn complete() -> Change {
    Change::Complete {
        fare: Money {
            amount: 9_900,
            currency: "KRW".into(),
        },
    }
}

#[test]
fn happy_path_counts_seqs_without_gaps() {
    let t = run(&[accept(), Change::Arrive, Change::Start, complete()]).unwrap();
    assert_eq!(t.state, TripState::Completed);
    assert_eq!(t.seq, 5);
    assert_eq!(t.driver_id.as_deref(), Some("drv_1"));
    assert_eq!(t.fare.unwrap().amount, 9_900);
    assert_eq!(t.updated_at, Timestamp(4));
}

#[test]
fn driver_cancel_returns_to_requested_without_driver() {
    let t = run(&[accept(), Change::Arrive, Change::DriverCancel]).unwrap();
    assert_eq!(t.state, TripState::Requested);
    assert_eq!(t.driver_id, None);
    assert_eq!(t.seq, 4);
    let t = t.apply(&accept(), Timestamp(9)).unwrap();
    assert_eq!(t.state, TripState::Accepted);
}

#[test]
fn cancel_is_allowed_until_pickup_only() {
    assert!(run(&[Change::Cancel]).is_ok());
    assert!(run(&[accept(), Change::Cancel]).is_ok());
    assert!(run(&[accept(), Change::Arrive, Change::Cancel]).is_ok());
    let err = run(&[accept(), Change::Arrive, Change::Start, Change::Cancel]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "a trip that is in_progress cannot be cancelled"
    );
}

#[test]
fn an_operator_can_end_any_active_trip() {
    for state in TripState::ALL {
        let mut t = trip();
        t.state = state;
        if state.has_driver() {
            t.driver_id = Some("drv_1".into());
        }
        let voided = t.apply(&Change::Void, Timestamp(1));
        assert_eq!(voided.is_ok(), !state.is_terminal(), "{state:?}");
        if let Ok(voided) = voided {
            assert_eq!(voided.state, TripState::Cancelled);
        }
    }
}

#[test]
fn a_lost_driver_gives_the_trip_back_before_pickup_and_flags_it_after() {
    let t = run(&[accept(), Change::Arrive, Change::DriverLost]).unwrap();
    assert_eq!(
        (t.state, t.driver_id.as_deref(), t.seq),
        (TripState::Requested, None, 4)
    );
    let t = run(&[accept(), Change::Arrive, Change::Start, Change::DriverLost]).unwrap();
    assert_eq!(
        (t.state, t.driver_id.as_deref(), t.seq),
        (TripState::InProgress, Some("drv_1"), 5)
    );
    // The ride can still end normally if the driver comes back.
    assert_eq!(
        t.apply(&complete(), Timestamp(9)).unwrap().state,
        TripState::Completed
    );
}

#[test]
fn every_pair_outside_the_diagram_is_rejected() {
    use TripState::*;
    let allowed = [
        (Requested, EventKind::Accepted),
        (Requested, EventKind::Cancelled),
        (Requested, EventKind::Expired),
        (Accepted, EventKind::Arrived),
        (Accepted, EventKind::Cancelled),
        (Accepted, EventKind::DriverCancelled),
        (Arrived, EventKind::Started),
        (Arrived, EventKind::Cancelled),
        (Arrived, EventKind::DriverCancelled),
        (InProgress, EventKind::Completed),
        (Accepted, EventKind::DriverLost),
        (Arrived, EventKind::DriverLost),
        (InProgress, EventKind::DriverLost),
    ];
    let changes = [
        accept(),
        Change::Arrive,
        Change::Start,
        complete(),
        Change::Cancel,
        Change::DriverCancel,
        Change::Expire,
        Change::DriverLost,
    ];
    for state in TripState::ALL {
        let mut t = trip();
        t.state = state;
        if state.has_driver() {
            t.driver_id = Some("drv_1".into());
        }
        for change in &changes {
            let ok = t.apply(change, Timestamp(1)).is_ok();
            assert_eq!(
                ok,
                allowed.contains(&(state, change.event_kind())),
                "{state:?} {change:?}"
            );
        }
    }
}

#[test]
fn names_round_trip() {
    for state in TripState::ALL {
        assert_eq!(TripState::parse(state.as_str()), Some(state));
        assert_eq!(serde_json::to_value(state).unwrap(), state.as_str());
    }
    for kind in EventKind::ALL {
        assert_eq!(EventKind::parse(kind.as_str()), Some(kind));
        assert_eq!(serde_json::to_value(kind).unwrap(), kind.as_str());
    }
}

#[test]
fn monotonic_instants_map_onto_the_wall_clock() {
    let now = tokio::time::Instant::now();
    let wall = Timestamp::at(now);
    assert!((wall.millis() - Timestamp::now().millis()).abs() < 100);
    let later = now + std::time::Duration::from_secs(90);
    assert_eq!(Timestamp::at(later).millis() - wall.millis(), 90_000);
}

#[test]
fn timestamps_are_rfc3339_and_round_trip() {
    let at = Timestamp(1_700_000_000_123);
    assert_eq!(at.to_rfc3339(), "2023-11-14T22:13:20.123Z");
    let back: Timestamp = serde_json::from_value(serde_json::to_value(at).unwrap()).unwrap();
    assert_eq!(back, at);
}

#[test]
fn seoul_fare() {
    let tariff = Tariff {
        base: 4_800,
        per_km: 760,
        per_minute: 200,
        currency: "KRW".into(),
    };
    assert_eq!(tariff.fare(0.0, 0.0).amount, 4_800);
    // 10 km in 20 minutes: 4,800 + 7,600 + 4,000.
    assert_eq!(tariff.fare(10_000.0, 1_200.0).amount, 16_400);
    assert_eq!(tariff.fare(-5.0, -1.0).amount, 4_800);
}
