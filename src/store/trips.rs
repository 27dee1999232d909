//! Trips and their events. Every change is one transaction: the versioned trip update,
//! its event, and what the change implies for offers and exclusions — see
//! [`Store::transition`].

use sqlx::{Row, any::AnyRow};

use super::{
    Fence, MAX_ATTEMPTS, Store, StoreError, Unique, backoff, cluster::check_fence, is_retryable,
    retrying, unique_violation,
};
use crate::{
    geometry::LatLng,
    ids::new_id,
    protocol::{WithdrawReason, operators::OfferOutcome},
    trip::{Actor, Change, EventKind, Money, Role, Timestamp, Trip, TripEvent, TripState},
};

pub(super) const TRIP_COLUMNS: &str = "id, state, seq, passenger_id, driver_id, pickup_lat, pickup_lng, \
     dropoff_lat, dropoff_lng, fare_estimate_amount, fare_amount, currency, requested_at, updated_at";

/// A request for a new trip, already validated.
#[derive(Debug, Clone)]
pub struct NewTrip {
    pub passenger_id: String,
    pub pickup: LatLng,
    pub dropoff: LatLng,
    pub fare_estimate: Money,
    pub idempotency_key: Option<String>,
}

/// What [`Store::create_trip`] did.
#[derive(Debug, Clone)]
pub enum Creation {
    /// A new trip, with its `requested` event.
    Created(TripEvent),
    /// A retry with a known idempotency key: the trip created first, as it is now.
    Existing(Trip),
}

/// Who asks for a change, why, and under which conditions it must commit.
#[derive(Debug, Clone)]
pub struct Cause {
    /// When the change is made (event time; the trip's `updated_at`).
    pub at: Timestamp,
    pub actor: Actor,
    pub reason: Option<String>,
    /// Dispatch writes commit only under the current lease epoch.
    pub fence: Option<Fence>,
    /// An accept through an offer: the offer must be open, unexpired and the driver's,
    /// and is marked accepted in the same transaction.
    pub offer_id: Option<String>,
}

impl Cause {
    pub fn by(actor: Actor, at: Timestamp) -> Cause {
        Cause {
            at,
            actor,
            reason: None,
            fence: None,
            offer_id: None,
        }
    }

    pub fn because(mut self, reason: Option<String>) -> Cause {
        self.reason = reason;
        self
    }
}

/// An offer a committed trip change closed: the trip left `requested`, or its new driver
/// held an offer for another trip.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ClosedOffer {
    pub offer_id: String,
    pub trip_id: String,
    pub driver_id: String,
    pub outcome: OfferOutcome,
    /// What the driver is told, for withdrawn offers.
    pub reason: Option<WithdrawReason>,
}

/// A committed trip change: the trip before it, the event it produced, and the offers it
/// closed.
#[derive(Debug, Clone)]
pub struct Transition {
    pub before: Trip,
    pub event: TripEvent,
    pub closed_offers: Vec<ClosedOffer>,
}

impl Store {
    /// Creates a trip with its `requested` event (seq 1). With an idempotency key, a retry
    /// of the same request returns the trip created first.
    pub async fn create_trip(&self, new: NewTrip, now: Timestamp) -> Result<Creation, StoreError> {
        if let Some(existing) = self.trip_by_idempotency_key(&new).await? {
            return Ok(Creation::Existing(existing));
        }
        let trip = Trip {
            id: new_id("trp"),
            state: TripState::Requested,
            seq: 1,
            passenger_id: new.passenger_id.clone(),
            driver_id: None,
            pickup: new.pickup,
            dropoff: new.dropoff,
            fare_estimate: new.fare_estimate.clone(),
            fare: None,
            requested_at: now,
            updated_at: now,
        };
        let event = TripEvent {
            trip_id: trip.id.clone(),
            seq: 1,
            event: EventKind::Requested,
            at: now,
            actor: Actor::new(Role::Passenger, &new.passenger_id),
            reason: None,
            trip: trip.clone(),
        };
        let result = retrying(|| async {
            let (_turn, mut tx) = self.begin_write().await?;
            sqlx::query(
                "INSERT INTO trips (id, state, seq, passenger_id, driver_id, pickup_lat, pickup_lng, \
                 dropoff_lat, dropoff_lng, fare_estimate_amount, fare_amount, currency, \
                 requested_at, updated_at, idempotency_key) \
                 VALUES ($1, $2, $3, $4, NULL, $5, $6, $7, $8, $9, NULL, $10, $11, $12, $13)",
            )
            .bind(&trip.id)
            .bind(trip.state.as_str())
            .bind(trip.seq)
            .bind(&trip.passenger_id)
            .bind(trip.pickup.lat())
            .bind(trip.pickup.lng())
            .bind(trip.dropoff.lat())
            .bind(trip.dropoff.lng())
            .bind(trip.fare_estimate.amount)
            .bind(&trip.fare_estimate.currency)
            .bind(now.millis())
            .bind(now.millis())
            .bind(new.idempotency_key.as_deref())
            .execute(&mut *tx)
            .await?;
            insert_event(&mut tx, &event).await?;
            tx.commit().await
        })
        .await;
        match result {
            Ok(()) => Ok(Creation::Created(event)),
            Err(error) => match unique_violation(&error) {
                Some(Unique::IdempotencyKey) => match self.trip_by_idempotency_key(&new).await? {
                    Some(existing) => Ok(Creation::Existing(existing)),
                    None => Err(StoreError::Contention),
                },
                Some(Unique::Passenger) => Err(StoreError::PassengerBusy),
                _ => Err(error.into()),
            },
        }
    }

    async fn trip_by_idempotency_key(&self, new: &NewTrip) -> Result<Option<Trip>, StoreError> {
        let Some(key) = &new.idempotency_key else {
            return Ok(None);
        };
        let sql = format!(
            "SELECT {TRIP_COLUMNS} FROM trips WHERE passenger_id = $1 AND idempotency_key = $2"
        );
        let row = retrying(|| async {
            sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                .bind(&new.passenger_id)
                .bind(key)
                .fetch_optional(&self.pool()?)
                .await
        })
        .await?;
        let Some(trip) = row.map(|row| trip_from_row(&row)).transpose()? else {
            return Ok(None);
        };
        if trip.pickup != new.pickup || trip.dropoff != new.dropoff {
            return Err(StoreError::IdempotencyKeyReused);
        }
        Ok(Some(trip))
    }

    pub async fn trip(&self, id: &str) -> Result<Option<Trip>, StoreError> {
        let sql = format!("SELECT {TRIP_COLUMNS} FROM trips WHERE id = $1");
        let row = self.row_for(&sql, id).await?;
        row.map(|row| trip_from_row(&row)).transpose()
    }

    /// Applies `change` to the trip's current version, in one transaction with everything
    /// it implies:
    ///
    /// - an accept through an offer marks that offer accepted (it must be open, unexpired
    ///   and the accepting driver's);
    /// - a trip leaving `requested` withdraws its open offer, and a driver taking a trip
    ///   gives up any offer it held for another;
    /// - a driver handing a trip back is excluded from it;
    /// - with a fence, nothing commits unless the lease epoch is still the writer's.
    ///
    /// `guard` sees the fresh trip first and may refuse (ownership). Lost races are retried
    /// against the new version, so a change that no longer fits fails with
    /// `InvalidTransition`, never silently.
    pub async fn transition(
        &self,
        trip_id: &str,
        change: &Change,
        cause: &Cause,
        guard: impl Fn(&Trip) -> Result<(), StoreError>,
    ) -> Result<Transition, StoreError> {
        for attempt in 0..MAX_ATTEMPTS {
            let before = self
                .trip(trip_id)
                .await?
                .ok_or(StoreError::NotFound("trip"))?;
            guard(&before)?;
            let now = cause.at.max(before.updated_at);
            let after = before.apply(change, now)?;
            let event = TripEvent {
                trip_id: after.id.clone(),
                seq: after.seq,
                event: change.event_kind(),
                at: now,
                actor: cause.actor.clone(),
                reason: cause.reason.clone(),
                trip: after,
            };
            match self.commit_transition(&before, &event, cause).await {
                Ok(Committed::Done(closed_offers)) => {
                    return Ok(Transition {
                        before,
                        event,
                        closed_offers,
                    });
                }
                Ok(Committed::VersionMoved) => {}
                Ok(Committed::Refused(error)) => return Err(error),
                Err(error) if is_retryable(&error) => backoff(attempt).await,
                Err(error) => {
                    return Err(match unique_violation(&error) {
                        Some(Unique::Driver) => StoreError::DriverBusy,
                        Some(Unique::Passenger) => StoreError::PassengerBusy,
                        _ => error.into(),
                    });
                }
            }
        }
        Err(StoreError::Contention)
    }

    async fn commit_transition(
        &self,
        before: &Trip,
        event: &TripEvent,
        cause: &Cause,
    ) -> Result<Committed, sqlx::Error> {
        let after = &event.trip;
        let now = event.at.millis();
        let (_turn, mut tx) = self.begin_write().await?;
        if let Some(fence) = &cause.fence
            && !check_fence(&mut tx, fence).await?
        {
            tx.rollback().await?;
            return Ok(Committed::Refused(StoreError::Fenced));
        }
        let mut closed = Vec::new();
        if let (Some(offer_id), Some(driver_id)) = (&cause.offer_id, &after.driver_id) {
            let accepted = sqlx::query(
                "UPDATE offers SET state = 'accepted', closed_at = $1 \
                 WHERE id = $2 AND trip_id = $3 AND driver_id = $4 AND state = 'open' AND expires_at > $1",
            )
            .bind(now)
            .bind(offer_id)
            .bind(&after.id)
            .bind(driver_id)
            .execute(&mut *tx)
            .await?;
            if accepted.rows_affected() == 0 {
                tx.rollback().await?;
                return Ok(Committed::Refused(StoreError::OfferLapsed));
            }
            closed.push(ClosedOffer {
                offer_id: offer_id.clone(),
                trip_id: after.id.clone(),
                driver_id: driver_id.clone(),
                outcome: OfferOutcome::Accepted,
                reason: None,
            });
        }
        let updated = sqlx::query(
            "UPDATE trips SET state = $1, seq = $2, driver_id = $3, fare_amount = $4, updated_at = $5 \
             WHERE id = $6 AND seq = $7",
        )
        .bind(after.state.as_str())
        .bind(after.seq)
        .bind(after.driver_id.as_deref())
        .bind(after.fare.as_ref().map(|fare| fare.amount))
        .bind(after.updated_at.millis())
        .bind(&after.id)
        .bind(before.seq)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(Committed::VersionMoved);
        }
        insert_event(&mut tx, event).await?;
        if before.state == TripState::Requested && after.state != TripState::Requested {
            let reason = match event.event {
                EventKind::Cancelled => WithdrawReason::Cancelled,
                EventKind::Expired => WithdrawReason::Expired,
                _ => WithdrawReason::Taken,
            };
            let rows = sqlx::query(
                "UPDATE offers SET state = 'withdrawn', closed_at = $1, withdraw_reason = $2 \
                 WHERE trip_id = $3 AND state = 'open' RETURNING id, driver_id",
            )
            .bind(now)
            .bind(reason.as_str())
            .bind(&after.id)
            .fetch_all(&mut *tx)
            .await?;
            for row in rows {
                closed.push(ClosedOffer {
                    offer_id: row.try_get("id")?,
                    trip_id: after.id.clone(),
                    driver_id: row.try_get("driver_id")?,
                    outcome: OfferOutcome::Withdrawn,
                    reason: Some(reason),
                });
            }
        }
        if event.event == EventKind::Accepted
            && let Some(driver_id) = &after.driver_id
        {
            // The driver is busy now: an offer it held for another trip is void.
            let rows = sqlx::query(
                "UPDATE offers SET state = 'withdrawn', closed_at = $1, withdraw_reason = 'cancelled' \
                 WHERE driver_id = $2 AND state = 'open' RETURNING id, trip_id",
            )
            .bind(now)
            .bind(driver_id)
            .fetch_all(&mut *tx)
            .await?;
            for row in rows {
                closed.push(ClosedOffer {
                    offer_id: row.try_get("id")?,
                    trip_id: row.try_get("trip_id")?,
                    driver_id: driver_id.clone(),
                    outcome: OfferOutcome::Withdrawn,
                    reason: Some(WithdrawReason::Cancelled),
                });
            }
        }
        if matches!(
            event.event,
            EventKind::DriverCancelled | EventKind::DriverLost
        ) && after.driver_id.is_none()
            && let Some(driver_id) = &before.driver_id
        {
            insert_exclusion(&mut tx, &after.id, driver_id, event.event.as_str()).await?;
        }
        tx.commit().await?;
        Ok(Committed::Done(closed))
    }

    /// Events with seq > `after`, in order, at most [`super::EVENTS_PAGE`].
    pub async fn events_after(
        &self,
        trip_id: &str,
        after: i64,
    ) -> Result<Vec<TripEvent>, StoreError> {
        let rows = retrying(|| async {
            sqlx::query(
                "SELECT seq, event, at, actor_role, actor_id, reason, trip FROM trip_events \
                 WHERE trip_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
            )
            .bind(trip_id)
            .bind(after)
            .bind(super::EVENTS_PAGE)
            .fetch_all(&self.pool()?)
            .await
        })
        .await?;
        rows.iter()
            .map(|row| {
                let corrupt = |what: String| StoreError::Corrupt(what);
                let event: String = row.try_get("event")?;
                let role: String = row.try_get("actor_role")?;
                let trip: String = row.try_get("trip")?;
                Ok(TripEvent {
                    trip_id: trip_id.to_string(),
                    seq: row.try_get("seq")?,
                    event: EventKind::parse(&event)
                        .ok_or_else(|| corrupt(format!("event {event}")))?,
                    at: Timestamp(row.try_get("at")?),
                    actor: Actor {
                        role: Role::parse(&role).ok_or_else(|| corrupt(format!("role {role}")))?,
                        id: row.try_get("actor_id")?,
                    },
                    reason: row.try_get("reason")?,
                    trip: serde_json::from_str(&trip).map_err(|e| corrupt(e.to_string()))?,
                })
            })
            .collect()
    }

    /// The highest seq of a trip's events (0 if none): an idle stream's check that it
    /// missed nothing.
    pub async fn latest_seq(&self, trip_id: &str) -> Result<i64, StoreError> {
        let seq: Option<i64> = retrying(|| async {
            sqlx::query_scalar("SELECT seq FROM trips WHERE id = $1")
                .bind(trip_id)
                .fetch_optional(&self.pool()?)
                .await
        })
        .await?;
        Ok(seq.unwrap_or(0))
    }

    pub async fn exclusions(&self, trip_id: &str) -> Result<Vec<String>, StoreError> {
        Ok(retrying(|| async {
            sqlx::query_scalar("SELECT driver_id FROM trip_exclusions WHERE trip_id = $1")
                .bind(trip_id)
                .fetch_all(&self.pool()?)
                .await
        })
        .await?)
    }

    pub async fn trips_in_states(&self, states: &[TripState]) -> Result<Vec<Trip>, StoreError> {
        let list: Vec<String> = states.iter().map(|s| format!("'{}'", s.as_str())).collect();
        let sql = format!(
            "SELECT {TRIP_COLUMNS} FROM trips WHERE state IN ({}) ORDER BY requested_at",
            list.join(", ")
        );
        let rows = retrying(|| async {
            sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                .fetch_all(&self.pool()?)
                .await
        })
        .await?;
        rows.iter().map(trip_from_row).collect()
    }

    /// How many trips wait for a driver, and how many have one.
    pub async fn open_trip_counts(&self) -> Result<(usize, usize), StoreError> {
        let rows = retrying(|| async {
            sqlx::query(
                "SELECT state, COUNT(*) AS n FROM trips \
                 WHERE state IN ('requested', 'accepted', 'arrived', 'in_progress') GROUP BY state",
            )
            .fetch_all(&self.pool()?)
            .await
        })
        .await?;
        let (mut requested, mut active) = (0, 0);
        for row in rows {
            let state: String = row.try_get("state")?;
            let count: i64 = row.try_get("n")?;
            if state == "requested" {
                requested += count as usize;
            } else {
                active += count as usize;
            }
        }
        Ok((requested, active))
    }

    /// The most recently finished trips, newest first.
    pub async fn recent_terminal_trips(&self, limit: i64) -> Result<Vec<Trip>, StoreError> {
        let sql = format!(
            "SELECT {TRIP_COLUMNS} FROM trips WHERE state IN ('completed', 'cancelled', 'expired') \
             ORDER BY updated_at DESC LIMIT $1"
        );
        let rows = retrying(|| async {
            sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                .bind(limit)
                .fetch_all(&self.pool()?)
                .await
        })
        .await?;
        rows.iter().map(trip_from_row).collect()
    }

    /// The trip a driver is on, if any.
    pub async fn active_trip_of_driver(&self, driver_id: &str) -> Result<Option<Trip>, StoreError> {
        let sql = format!(
            "SELECT {TRIP_COLUMNS} FROM trips WHERE driver_id = $1 \
             AND state IN ('accepted', 'arrived', 'in_progress')"
        );
        let row = self.row_for(&sql, driver_id).await?;
        row.map(|row| trip_from_row(&row)).transpose()
    }
}

enum Committed {
    Done(Vec<ClosedOffer>),
    /// Another change got there first: read again and retry.
    VersionMoved,
    /// A condition of the cause failed; final.
    Refused(StoreError),
}

async fn insert_event(
    connection: &mut sqlx::AnyConnection,
    event: &TripEvent,
) -> Result<(), sqlx::Error> {
    let trip = serde_json::to_string(&event.trip).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    sqlx::query(
        "INSERT INTO trip_events (trip_id, seq, event, at, actor_role, actor_id, reason, trip) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(&event.trip_id)
    .bind(event.seq)
    .bind(event.event.as_str())
    .bind(event.at.millis())
    .bind(event.actor.role.as_str())
    .bind(event.actor.id.as_deref())
    .bind(event.reason.as_deref())
    .bind(trip)
    .execute(&mut *connection)
    .await?;
    Ok(())
}

pub(super) async fn insert_exclusion(
    connection: &mut sqlx::AnyConnection,
    trip_id: &str,
    driver_id: &str,
    reason: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO trip_exclusions (trip_id, driver_id, reason) VALUES ($1, $2, $3) \
         ON CONFLICT (trip_id, driver_id) DO NOTHING",
    )
    .bind(trip_id)
    .bind(driver_id)
    .bind(reason)
    .execute(&mut *connection)
    .await?;
    Ok(())
}

pub(super) fn trip_from_row(row: &AnyRow) -> Result<Trip, StoreError> {
    let corrupt = |what: String| StoreError::Corrupt(what);
    let state: String = row.try_get("state")?;
    let point = |lat: &str, lng: &str| -> Result<LatLng, StoreError> {
        LatLng::new(row.try_get(lat)?, row.try_get(lng)?).map_err(|e| corrupt(e.to_string()))
    };
    let currency: String = row.try_get("currency")?;
    Ok(Trip {
        id: row.try_get("id")?,
        state: TripState::parse(&state).ok_or_else(|| corrupt(format!("state {state}")))?,
        seq: row.try_get("seq")?,
        passenger_id: row.try_get("passenger_id")?,
        driver_id: row.try_get("driver_id")?,
        pickup: point("pickup_lat", "pickup_lng")?,
        dropoff: point("dropoff_lat", "dropoff_lng")?,
        fare_estimate: Money {
            amount: row.try_get("fare_estimate_amount")?,
            currency: currency.clone(),
        },
        fare: row
            .try_get::<Option<i64>, _>("fare_amount")?
            .map(|amount| Money { amount, currency }),
        requested_at: Timestamp(row.try_get("requested_at")?),
        updated_at: Timestamp(row.try_get("updated_at")?),
    })
}
