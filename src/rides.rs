//! Ride operations: what a request to change a trip does, start to finish — check who
//! asks, commit the change in the store, then bring the fleet, the dispatcher and the
//! watchers up to date. The HTTP handlers call these; so do tests that drive time by hand.
//!
//! Order matters and is the same everywhere: the store commits first; only then does
//! anything in memory change or anyone hear of it (invariant 3).

use tokio::time::Instant;

use crate::{
    error::ApiError,
    fleet::DriverState,
    geometry::LatLng,
    hub::WithdrawReason,
    server::Shared,
    store::{Creation, NewTrip, Role, StoreError},
    trip::{Change, EventKind, InvalidTransition, Money, Timestamp, Trip, TripEvent, TripState},
};

/// Who is acting.
#[derive(Debug, Clone)]
pub struct Principal {
    pub id: String,
    pub role: Role,
}

impl Principal {
    pub fn require(&self, role: Role) -> Result<(), ApiError> {
        if self.role == role {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "only a {} may do this",
                role_name(role)
            )))
        }
    }

    /// Whether this caller may see the trip: its passenger, its driver, or an operator.
    pub fn can_see(&self, trip: &Trip) -> bool {
        match self.role {
            Role::Operator => true,
            Role::Passenger => trip.passenger_id == self.id,
            Role::Driver => trip.driver_id.as_deref() == Some(self.id.as_str()),
        }
    }
}

pub fn role_name(role: Role) -> &'static str {
    match role {
        Role::Passenger => "passenger",
        Role::Driver => "driver",
        Role::Operator => "operator",
    }
}

/// A trip the caller may see; another user's trip is indistinguishable from no trip.
pub async fn visible_trip(
    state: &Shared,
    principal: &Principal,
    trip_id: &str,
) -> Result<Trip, ApiError> {
    match state.store.trip(trip_id).await? {
        Some(trip) if principal.can_see(&trip) => Ok(trip),
        _ => Err(ApiError::not_found("trip")),
    }
}

/// Fare estimate: straight line × detour factor, at the average urban speed.
pub fn estimate_fare(state: &Shared, pickup: &LatLng, dropoff: &LatLng) -> Money {
    let dispatch = &state.config.dispatch;
    let road_m = pickup.distance_m(dropoff) * dispatch.detour_factor;
    state.tariff.fare(road_m, road_m / dispatch.urban_speed_mps)
}

/// A passenger asks for a ride. A retry with the same idempotency key returns the trip
/// created first.
pub async fn request(
    state: &Shared,
    passenger: &Principal,
    pickup: LatLng,
    dropoff: LatLng,
    idempotency_key: Option<String>,
    now: Instant,
) -> Result<Trip, ApiError> {
    passenger.require(Role::Passenger)?;
    let new = NewTrip {
        passenger_id: passenger.id.clone(),
        fare_estimate: estimate_fare(state, &pickup, &dropoff),
        pickup,
        dropoff,
        idempotency_key,
    };
    Ok(match state.store.create_trip(new).await? {
        Creation::Created(event) => {
            // Published first, so watchers see the request before any offer for it.
            committed(state, &event, None);
            state.dispatcher.submit(&event.trip, [], now);
            event.trip
        }
        Creation::Existing(trip) => trip,
    })
}

/// The trip's driver moves it along: arrived, started.
pub async fn driver_step(
    state: &Shared,
    driver: &Principal,
    trip_id: &str,
    change: Change,
) -> Result<Trip, ApiError> {
    driver.require(Role::Driver)?;
    let transition = state
        .store
        .transition(trip_id, &change, |trip| {
            if trip.driver_id.as_deref() == Some(driver.id.as_str()) {
                Ok(())
            } else {
                Err(StoreError::Rejected(ApiError::not_found("trip")))
            }
        })
        .await?;
    committed(
        state,
        &transition.event,
        transition.before.driver_id.as_deref(),
    );
    Ok(transition.event.trip)
}

/// The driver ends the ride. The fare comes from the distance actually driven since
/// `started`; if this node did not see the whole ride (it restarted mid-trip), the
/// straight line from pickup to drop-off × detour factor stands in as the least the ride
/// can have been.
pub async fn complete(state: &Shared, driver: &Principal, trip_id: &str) -> Result<Trip, ApiError> {
    driver.require(Role::Driver)?;
    let trip = visible_trip(state, driver, trip_id).await?;
    if trip.state != TripState::InProgress {
        let invalid = InvalidTransition {
            from: trip.state.as_str(),
            event: EventKind::Completed.as_str(),
        };
        return Err(StoreError::InvalidTransition(invalid).into());
    }
    let events = state.store.events_after(trip_id, 0).await?;
    let started_at = events
        .iter()
        .rev()
        .find(|e| e.event == EventKind::Started)
        .map_or(trip.updated_at, |e| e.at);
    let duration_s = (Timestamp::now().millis() - started_at.millis()).max(0) as f64 / 1_000.0;
    let estimate_m = trip.pickup.distance_m(&trip.dropoff) * state.config.dispatch.detour_factor;
    let driven_m = state
        .fleet
        .lock()
        .unwrap()
        .odometer_m(&driver.id)
        .unwrap_or(estimate_m);
    let fare = state.tariff.fare(driven_m, duration_s);
    driver_step(state, driver, trip_id, Change::Complete { fare }).await
}

/// A cancel by the passenger or an operator ends the trip; the assigned driver's cancel
/// before pickup gives the trip back to dispatch, which never offers it to that driver
/// again.
pub async fn cancel(
    state: &Shared,
    principal: &Principal,
    trip_id: &str,
    reason: Option<&str>,
    now: Instant,
) -> Result<Trip, ApiError> {
    let change = if principal.role == Role::Driver {
        Change::DriverCancel
    } else {
        Change::Cancel
    };
    let transition = state
        .store
        .transition(trip_id, &change, |fresh| {
            if principal.can_see(fresh) {
                Ok(())
            } else {
                Err(StoreError::Rejected(ApiError::not_found("trip")))
            }
        })
        .await?;
    let event = &transition.event;
    tracing::info!(%trip_id, by = role_name(principal.role), reason = reason.unwrap_or(""),
        event = event.event.as_str(), "trip cancelled");
    if transition.before.state == TripState::Requested {
        state
            .dispatcher
            .trip_closed(trip_id, WithdrawReason::Cancelled);
    }
    committed(state, event, transition.before.driver_id.as_deref());
    if event.event == EventKind::DriverCancelled {
        let excluded = state.store.exclusions(trip_id).await?;
        state.dispatcher.submit(&event.trip, excluded, now);
    }
    Ok(transition.event.trip)
}

/// An operator dispatches a trip by hand to an online, available driver.
pub async fn assign(
    state: &Shared,
    trip_id: &str,
    driver_id: &str,
    now: Instant,
) -> Result<Trip, ApiError> {
    if state.store.account_role(driver_id).await? != Some(Role::Driver) {
        return Err(ApiError::not_found("driver"));
    }
    let available = state
        .fleet
        .lock()
        .unwrap()
        .view(driver_id, now)
        .is_some_and(|view| matches!(view.state, DriverState::Available | DriverState::Offered));
    if !available {
        return Err(ApiError::conflict(
            "driver_unavailable",
            "that driver is not online and available",
        ));
    }
    let change = Change::Accept {
        driver_id: driver_id.to_string(),
    };
    let transition = state.store.transition(trip_id, &change, |_| Ok(())).await?;
    state.dispatcher.trip_closed(trip_id, WithdrawReason::Taken);
    state
        .dispatcher
        .withdraw_offer_of(driver_id, WithdrawReason::Cancelled, now);
    committed(state, &transition.event, None);
    Ok(transition.event.trip)
}

/// Bookkeeping after a committed trip change: fleet, dispatcher, metrics, fan-out.
fn committed(state: &Shared, event: &TripEvent, previous_driver: Option<&str>) {
    let trip = &event.trip;
    if let Some(driver_id) = previous_driver.or(trip.driver_id.as_deref()) {
        let mut fleet = state.fleet.lock().unwrap();
        match event.event {
            EventKind::Started => fleet.start_odometer(driver_id),
            EventKind::Accepted => fleet.set_trip(driver_id, Some(trip.id.clone())),
            _ if trip.state.has_driver() => {}
            _ => fleet.set_trip(driver_id, None),
        }
    }
    if previous_driver.is_some() && !trip.state.has_driver() {
        state.dispatcher.driver_available();
    }
    state.metrics.transition(event.event.as_str());
    state.hub.publish(event, previous_driver);
}
