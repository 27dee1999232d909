//! What passengers, drivers and operators ask of a trip, start to finish: check, commit,
//! then the commit path ([`Rides::commit`]). Time is a parameter (`now`), so tests can
//! drive it by hand; wall-clock stamps derive from it ([`Timestamp::at`]).

use tokio::time::Instant;

use super::Rides;
use crate::{
    auth::Principal,
    bus::Note,
    error::{ApiError, ErrorCode},
    fleet::DriverState,
    geometry::LatLng,
    store::{Cause, Creation, NewTrip, StoreError},
    trip::{
        Change, EventKind, InvalidTransition, Money, Role, Timestamp, Trip, TripEvent, TripState,
    },
};

impl Rides {
    /// A trip the caller may see; another user's trip is indistinguishable from no trip.
    pub async fn visible_trip(
        &self,
        principal: &Principal,
        trip_id: &str,
    ) -> Result<Trip, ApiError> {
        match self.store.trip(trip_id).await? {
            Some(trip) if principal.can_see(&trip) => Ok(trip),
            _ => Err(ApiError::not_found("trip")),
        }
    }

    /// The trip's events after seq `after`, for a caller who may see the trip.
    pub async fn events(
        &self,
        principal: &Principal,
        trip_id: &str,
        after: i64,
    ) -> Result<Vec<TripEvent>, ApiError> {
        self.visible_trip(principal, trip_id).await?;
        let events = self.store.events_after(trip_id, after).await?;
        Ok(events
            .into_iter()
            .map(|event| principal.redact(event))
            .collect())
    }

    /// Fare estimate: straight line × detour factor, at the average urban speed.
    pub fn estimate_fare(&self, pickup: &LatLng, dropoff: &LatLng) -> Money {
        let road_m = pickup.distance_m(dropoff) * self.config.detour_factor;
        self.tariff
            .fare(road_m, road_m / self.config.urban_speed_mps)
    }

    /// A passenger asks for a ride. A retry with the same idempotency key returns the trip
    /// created first.
    pub async fn request(
        &self,
        passenger: &Principal,
        pickup: LatLng,
        dropoff: LatLng,
        idempotency_key: Option<String>,
        now: Instant,
    ) -> Result<Trip, ApiError> {
        passenger.require(Role::Passenger)?;
        let new = NewTrip {
            passenger_id: passenger.id.clone(),
            fare_estimate: self.estimate_fare(&pickup, &dropoff),
            pickup,
            dropoff,
            idempotency_key,
        };
        Ok(
            match self.store.create_trip(new, Timestamp::at(now)).await? {
                Creation::Created(event) => {
                    let trip = event.trip.clone();
                    self.commit(Note::Trip {
                        event,
                        previous_driver: None,
                        closed_offers: Vec::new(),
                    });
                    trip
                }
                Creation::Existing(trip) => trip,
            },
        )
    }

    /// The trip's driver moves it along: arrived, started (and completed, see
    /// [`Self::complete`]).
    pub async fn driver_step(
        &self,
        driver: &Principal,
        trip_id: &str,
        change: Change,
        now: Instant,
    ) -> Result<Trip, ApiError> {
        self.driver_step_because(driver, trip_id, change, None, now)
            .await
    }

    async fn driver_step_because(
        &self,
        driver: &Principal,
        trip_id: &str,
        change: Change,
        reason: Option<String>,
        now: Instant,
    ) -> Result<Trip, ApiError> {
        driver.require(Role::Driver)?;
        let cause = Cause::by(driver.actor(), Timestamp::at(now)).because(reason);
        let transition = self
            .store
            .transition(trip_id, &change, &cause, |trip| {
                if trip.driver_id.as_deref() == Some(driver.id.as_str()) {
                    Ok(())
                } else {
                    Err(StoreError::NotYours)
                }
            })
            .await?;
        self.committed(&transition);
        Ok(transition.event.trip)
    }

    /// The ride ends: by its driver, metered ([`Self::metered_complete`]); by an operator
    /// resolving a ride whose driver cannot, at the estimate and with a reason
    /// ([`Self::complete_at_estimate`]). Anyone else may not.
    pub async fn complete(
        &self,
        principal: &Principal,
        trip_id: &str,
        reason: Option<String>,
        now: Instant,
    ) -> Result<Trip, ApiError> {
        if principal.role == Role::Operator {
            self.complete_at_estimate(principal, trip_id, reason, now)
                .await
        } else {
            self.metered_complete(principal, trip_id, now).await
        }
    }

    /// The driver ends the ride. The fare comes from the distance actually driven since
    /// `started` (pings implying an impossible speed left out); if this node did not see the
    /// whole ride (it restarted mid-trip), the straight line from pickup to drop-off ×
    /// detour factor stands in as the least the ride can have been. Whatever the meter
    /// says, the fare is at most `HAIL_FARE_CAP_FACTOR` × the estimate; a capped fare says
    /// so in its event's `reason` (and `hail_fares_capped_total`), for review.
    async fn metered_complete(
        &self,
        driver: &Principal,
        trip_id: &str,
        now: Instant,
    ) -> Result<Trip, ApiError> {
        driver.require(Role::Driver)?;
        let trip = self.visible_trip(driver, trip_id).await?;
        if trip.state != TripState::InProgress {
            let invalid = InvalidTransition {
                from: trip.state.as_str(),
                event: EventKind::Completed.as_str(),
            };
            return Err(StoreError::InvalidTransition(invalid).into());
        }
        let events = self.store.events_after(trip_id, 0).await?;
        let started_at = events
            .iter()
            .rev()
            .find(|e| e.event == EventKind::Started)
            .map_or(trip.updated_at, |e| e.at);
        let duration_s =
            (Timestamp::at(now).millis() - started_at.millis()).max(0) as f64 / 1_000.0;
        let estimate_m = trip.pickup.distance_m(&trip.dropoff) * self.config.detour_factor;
        let (driven_m, implausible) = self.fleet.odometer_m(&driver.id).unwrap_or((estimate_m, 0));
        let metered = self.tariff.fare(driven_m, duration_s);
        let cap = (trip.fare_estimate.amount as f64 * self.fare_cap_factor).floor() as i64;
        let mut notes = Vec::new();
        if implausible > 0 {
            notes.push(format!(
                "{implausible} pings implied an impossible speed and were not counted"
            ));
        }
        let fare = if metered.amount > cap {
            self.metrics.fares_capped.inc();
            notes.push(format!(
                "fare capped at {} × the estimate ({} {}): the meter read {} {} over {:.1} km",
                self.fare_cap_factor,
                trip.fare_estimate.amount,
                metered.currency,
                metered.amount,
                metered.currency,
                driven_m / 1_000.0
            ));
            Money {
                amount: cap,
                currency: metered.currency,
            }
        } else {
            metered
        };
        let reason = (!notes.is_empty()).then(|| notes.join("; "));
        if reason.is_some() {
            tracing::warn!(%trip_id, driver_id = %driver.id, ?reason, "fare flagged for review");
        }
        self.driver_step_because(driver, trip_id, Change::Complete { fare }, reason, now)
            .await
    }

    /// A cancel by the passenger ends the trip before pickup; an operator's ends it in any
    /// active state (a ride after pickup only with a reason: it is the resolution of a stuck
    /// trip). The assigned driver's cancel before pickup gives the trip back to dispatch,
    /// which never offers it to that driver again.
    pub async fn cancel(
        &self,
        principal: &Principal,
        trip_id: &str,
        reason: Option<String>,
        now: Instant,
    ) -> Result<Trip, ApiError> {
        let change = match principal.role {
            Role::Driver => Change::DriverCancel,
            Role::Operator => {
                let trip = self.visible_trip(principal, trip_id).await?;
                if trip.state == TripState::InProgress && reason.is_none() {
                    return Err(reason_required("cancelling a ride under way"));
                }
                Change::Void
            }
            _ => Change::Cancel,
        };
        let cause = Cause::by(principal.actor(), Timestamp::at(now)).because(reason);
        let transition = self
            .store
            .transition(trip_id, &change, &cause, |fresh| {
                if principal.can_see(fresh) {
                    Ok(())
                } else {
                    Err(StoreError::NotYours)
                }
            })
            .await?;
        tracing::info!(%trip_id, by = principal.role.as_str(), event = transition.event.event.as_str(),
            "trip cancelled");
        self.committed(&transition);
        Ok(transition.event.trip)
    }

    /// An operator ends every open trip, with one reason (`hail demo` starting on the store
    /// of an earlier demo, whose simulated passengers and drivers are gone). Returns how
    /// many it ended; trips that moved on meanwhile are left alone.
    pub async fn void_open_trips(
        &self,
        operator: &Principal,
        reason: &str,
    ) -> Result<usize, ApiError> {
        operator.require(Role::Operator)?;
        let open = [
            TripState::Requested,
            TripState::Accepted,
            TripState::Arrived,
            TripState::InProgress,
        ];
        let mut ended = 0;
        for trip in self.store.trips_in_states(&open).await? {
            let cancel = self.cancel(operator, &trip.id, Some(reason.to_string()), Instant::now());
            match cancel.await {
                Ok(_) => ended += 1,
                Err(error) if error.code == ErrorCode::InvalidTransition => {}
                Err(error) => return Err(error),
            }
        }
        Ok(ended)
    }

    /// An operator ends a ride under way whose driver cannot (vanished, phone dead): the
    /// trip completes at its estimate, with the operator's reason in the event.
    async fn complete_at_estimate(
        &self,
        operator: &Principal,
        trip_id: &str,
        reason: Option<String>,
        now: Instant,
    ) -> Result<Trip, ApiError> {
        operator.require(Role::Operator)?;
        let reason = reason.ok_or_else(|| reason_required("completing a ride for its driver"))?;
        let trip = self.visible_trip(operator, trip_id).await?;
        let change = Change::Complete {
            fare: trip.fare_estimate.clone(),
        };
        let cause = Cause::by(operator.actor(), Timestamp::at(now)).because(Some(reason));
        let transition = self
            .store
            .transition(trip_id, &change, &cause, |_| Ok(()))
            .await?;
        tracing::info!(%trip_id, operator = %operator.id, "ride completed by an operator");
        self.committed(&transition);
        Ok(transition.event.trip)
    }

    /// An operator dispatches a trip by hand to an online, available driver.
    pub async fn assign(
        &self,
        operator: &Principal,
        trip_id: &str,
        driver_id: &str,
        reason: Option<String>,
        now: Instant,
    ) -> Result<Trip, ApiError> {
        operator.require(Role::Operator)?;
        if self.store.account_role(driver_id).await? != Some(Role::Driver) {
            return Err(ApiError::not_found("driver"));
        }
        let available = self.fleet.view(driver_id, now).is_some_and(|view| {
            matches!(view.state, DriverState::Available | DriverState::Offered)
        });
        if !available {
            return Err(ApiError::new(
                ErrorCode::DriverUnavailable,
                "that driver is not online and available",
            ));
        }
        let change = Change::Accept {
            driver_id: driver_id.to_string(),
        };
        let cause = Cause::by(operator.actor(), Timestamp::at(now)).because(reason);
        let transition = self
            .store
            .transition(trip_id, &change, &cause, |_| Ok(()))
            .await?;
        self.committed(&transition);
        Ok(transition.event.trip)
    }

    /// The offered driver takes the trip. The store decides, in one transaction: the offer
    /// must be open, unexpired and this driver's, the trip still waiting, and the driver
    /// on no other trip.
    pub async fn accept(
        &self,
        driver: &Principal,
        offer_id: &str,
        now: Instant,
    ) -> Result<Trip, ApiError> {
        driver.require(Role::Driver)?;
        let transition = self
            .store
            .accept_offer(offer_id, &driver.id, Timestamp::at(now))
            .await?;
        self.committed(&transition);
        Ok(transition.event.trip)
    }

    /// The offered driver says no; it is never offered that trip again.
    pub async fn decline(
        &self,
        driver: &Principal,
        offer_id: &str,
        now: Instant,
    ) -> Result<(), ApiError> {
        driver.require(Role::Driver)?;
        let at = Timestamp::at(now);
        let closed = self.store.decline_offer(offer_id, &driver.id, at).await?;
        self.commit(Note::OfferClosed { closed, at });
        Ok(())
    }
}

/// A conflict with the trip's state rather than bad input: the same request without a
/// reason is fine before pickup.
fn reason_required(what: &str) -> ApiError {
    ApiError::new(
        ErrorCode::ReasonRequired,
        format!("{what} needs a reason (`reason`)"),
    )
}
