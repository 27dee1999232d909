//! Offers as rows (DESIGN §1): made by the dispatch leader under its lease epoch,
//! answered on whichever node the driver's request lands, each in one transaction. The
//! partial unique indexes allow one open offer per trip and per driver, cluster-wide.

use std::collections::HashMap;

use sqlx::{Row, any::AnyRow};

use super::{
    Cause, ClosedOffer, Fence, Store, StoreError, Transition, Unique, cluster::check_fence,
    retrying, trips::insert_exclusion, unique_violation,
};
use crate::{
    protocol::{
        OfferMessage, WithdrawReason,
        operators::{BatchInfo, OfferLog, OfferOutcome},
    },
    trip::{Actor, Change, Role, Timestamp, Trip, TripState},
};

const OFFER_COLUMNS: &str = "id, trip_id, driver_id, epoch, made_at, expires_at, state, \
     closed_at, withdraw_reason, pickup_distance_m, pickup_eta_s, candidate_rank, candidates, radius_m, \
     batch_window_ms, batch_size, batch_solve_us";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OfferState {
    Open,
    Accepted,
    Declined,
    Lapsed,
    Withdrawn,
}

impl OfferState {
    fn parse(text: &str) -> Option<OfferState> {
        Some(match text {
            "open" => OfferState::Open,
            "accepted" => OfferState::Accepted,
            "declined" => OfferState::Declined,
            "lapsed" => OfferState::Lapsed,
            "withdrawn" => OfferState::Withdrawn,
            _ => return None,
        })
    }

    fn outcome(self) -> OfferOutcome {
        match self {
            OfferState::Open => OfferOutcome::Made,
            OfferState::Accepted => OfferOutcome::Accepted,
            OfferState::Declined => OfferOutcome::Declined,
            OfferState::Lapsed => OfferOutcome::Expired,
            OfferState::Withdrawn => OfferOutcome::Withdrawn,
        }
    }
}

/// An offer the dispatcher decided to make, with the inputs of its ranking.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NewOffer {
    pub id: String,
    pub trip_id: String,
    pub driver_id: String,
    pub made_at: Timestamp,
    pub expires_at: Timestamp,
    pub pickup_distance_m: f64,
    pub pickup_eta_s: f64,
    pub rank: u32,
    pub candidates: u32,
    pub radius_m: f64,
    /// Chosen in a batch (`HAIL_MATCHING=batch`), not one trip at a time.
    #[serde(default)]
    pub batch: Option<BatchInfo>,
}

/// An offer as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct OfferRecord {
    pub offer: NewOffer,
    pub epoch: i64,
    pub state: OfferState,
    pub closed_at: Option<Timestamp>,
    pub withdraw_reason: Option<WithdrawReason>,
}

impl NewOffer {
    /// The message the driver receives.
    pub fn message(&self, trip: &Trip) -> OfferMessage {
        OfferMessage {
            offer_id: self.id.clone(),
            trip_id: self.trip_id.clone(),
            pickup: trip.pickup,
            dropoff: trip.dropoff,
            pickup_distance_m: self.pickup_distance_m.round(),
            pickup_eta_s: self.pickup_eta_s.round(),
            fare_estimate: trip.fare_estimate.clone(),
            expires_at: self.expires_at,
        }
    }

    /// The audit log line of its making.
    pub fn log(&self) -> OfferLog {
        OfferLog {
            offer_id: self.id.clone(),
            trip_id: self.trip_id.clone(),
            driver_id: self.driver_id.clone(),
            outcome: OfferOutcome::Made,
            pickup_distance_m: Some(self.pickup_distance_m.round()),
            pickup_eta_s: Some(self.pickup_eta_s.round()),
            rank: Some(self.rank),
            candidates: Some(self.candidates),
            radius_m: Some(self.radius_m),
            batch: self.batch,
            at: self.made_at,
        }
    }
}

impl ClosedOffer {
    /// The audit log line of its closing.
    pub fn log(&self, at: Timestamp) -> OfferLog {
        OfferLog {
            offer_id: self.offer_id.clone(),
            trip_id: self.trip_id.clone(),
            driver_id: self.driver_id.clone(),
            outcome: self.outcome,
            pickup_distance_m: None,
            pickup_eta_s: None,
            rank: None,
            candidates: None,
            radius_m: None,
            batch: None,
            at,
        }
    }
}

impl Store {
    /// Makes an offer, if `fence` still holds the lease, the trip is still waiting and the
    /// driver is on no trip (the leader's fleet may have missed that news). The trip row
    /// is locked (a no-op update) so a concurrent cancel either commits first — and the
    /// offer is refused — or waits and then withdraws this offer with the trip.
    pub async fn make_offer(&self, offer: &NewOffer, fence: &Fence) -> Result<(), StoreError> {
        let result = retrying(|| async {
            let (_turn, mut tx) = self.begin_write().await?;
            if !check_fence(&mut tx, fence).await? {
                tx.rollback().await?;
                return Ok(Err(StoreError::Fenced));
            }
            let waiting =
                sqlx::query("UPDATE trips SET seq = seq WHERE id = $1 AND state = 'requested'")
                    .bind(&offer.trip_id)
                    .execute(&mut *tx)
                    .await?;
            if waiting.rows_affected() == 0 {
                tx.rollback().await?;
                return Ok(Err(StoreError::TripGone));
            }
            let busy: Option<String> = sqlx::query_scalar(
                "SELECT id FROM trips WHERE driver_id = $1 \
                 AND state IN ('accepted', 'arrived', 'in_progress')",
            )
            .bind(&offer.driver_id)
            .fetch_optional(&mut *tx)
            .await?;
            if busy.is_some() {
                tx.rollback().await?;
                return Ok(Err(StoreError::DriverBusy));
            }
            sqlx::query(
                "INSERT INTO offers (id, trip_id, driver_id, epoch, made_at, expires_at, state, \
                 pickup_distance_m, pickup_eta_s, candidate_rank, candidates, radius_m, \
                 batch_window_ms, batch_size, batch_solve_us) \
                 VALUES ($1, $2, $3, $4, $5, $6, 'open', $7, $8, $9, $10, $11, $12, $13, $14)",
            )
            .bind(&offer.id)
            .bind(&offer.trip_id)
            .bind(&offer.driver_id)
            .bind(fence.epoch)
            .bind(offer.made_at.millis())
            .bind(offer.expires_at.millis())
            .bind(offer.pickup_distance_m)
            .bind(offer.pickup_eta_s)
            .bind(i64::from(offer.rank))
            .bind(i64::from(offer.candidates))
            .bind(offer.radius_m)
            .bind(offer.batch.map(|b| b.window_ms as i64))
            .bind(offer.batch.map(|b| i64::from(b.size)))
            .bind(offer.batch.map(|b| b.solve_us as i64))
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(Ok(()))
        })
        .await;
        match result {
            Ok(outcome) => outcome,
            Err(error) => Err(match unique_violation(&error) {
                Some(Unique::OfferDriver) => StoreError::DriverHasOffer,
                Some(Unique::OfferTrip) => StoreError::TripHasOffer,
                _ => error.into(),
            }),
        }
    }

    pub async fn offer(&self, offer_id: &str) -> Result<Option<OfferRecord>, StoreError> {
        let sql = format!("SELECT {OFFER_COLUMNS} FROM offers WHERE id = $1");
        let row = self.row_for(&sql, offer_id).await?;
        row.map(|row| offer_from_row(&row)).transpose()
    }

    /// The offer `driver_id` may answer now, or why not: unknown or someone else's → not
    /// found; answered, lapsed or withdrawn → the matching conflict.
    async fn answerable(
        &self,
        offer_id: &str,
        driver_id: &str,
        now: Timestamp,
    ) -> Result<NewOffer, StoreError> {
        let record = match self.offer(offer_id).await? {
            Some(record) if record.offer.driver_id == driver_id => record,
            _ => return Err(StoreError::NotFound("offer")),
        };
        match record.state {
            OfferState::Open if record.offer.expires_at > now => Ok(record.offer),
            OfferState::Open | OfferState::Lapsed => Err(StoreError::OfferLapsed),
            OfferState::Withdrawn => Err(StoreError::OfferWithdrawn),
            OfferState::Accepted | OfferState::Declined => Err(StoreError::OfferAnswered),
        }
    }

    /// The driver takes the offered trip: one transaction marks the offer accepted and the
    /// trip accepted (see [`Store::transition`]). The store decides every race — with a
    /// lapse, a decline on another node, a cancel, a second trip for the same driver.
    pub async fn accept_offer(
        &self,
        offer_id: &str,
        driver_id: &str,
        now: Timestamp,
    ) -> Result<Transition, StoreError> {
        let offer = self.answerable(offer_id, driver_id, now).await?;
        let change = Change::Accept {
            driver_id: driver_id.to_string(),
        };
        let mut cause = Cause::by(Actor::new(Role::Driver, driver_id), now);
        cause.offer_id = Some(offer_id.to_string());
        let result = self
            .transition(&offer.trip_id, &change, &cause, |trip| {
                if trip.state == TripState::Requested {
                    Ok(())
                } else {
                    Err(StoreError::TripGone)
                }
            })
            .await;
        match result {
            // The offer closed between the check and the commit: say how.
            Err(StoreError::OfferLapsed) => Err(self
                .answerable(offer_id, driver_id, now)
                .await
                .err()
                .unwrap_or(StoreError::OfferLapsed)),
            Err(StoreError::InvalidTransition(_)) => Err(StoreError::TripGone),
            other => other,
        }
    }

    /// The driver says no: the offer is declined and the driver never offered that trip
    /// again, in one transaction.
    pub async fn decline_offer(
        &self,
        offer_id: &str,
        driver_id: &str,
        now: Timestamp,
    ) -> Result<ClosedOffer, StoreError> {
        let offer = self.answerable(offer_id, driver_id, now).await?;
        let declined = retrying(|| async {
            let now = now.millis();
            let (_turn, mut tx) = self.begin_write().await?;
            let updated = sqlx::query(
                "UPDATE offers SET state = 'declined', closed_at = $1 \
                 WHERE id = $2 AND driver_id = $3 AND state = 'open' AND expires_at > $1",
            )
            .bind(now)
            .bind(offer_id)
            .bind(driver_id)
            .execute(&mut *tx)
            .await?;
            if updated.rows_affected() == 0 {
                tx.rollback().await?;
                return Ok(false);
            }
            insert_exclusion(&mut tx, &offer.trip_id, driver_id, "declined").await?;
            tx.commit().await?;
            Ok(true)
        })
        .await?;
        if !declined {
            return Err(self
                .answerable(offer_id, driver_id, now)
                .await
                .err()
                .unwrap_or(StoreError::OfferLapsed));
        }
        Ok(ClosedOffer {
            offer_id: offer_id.to_string(),
            trip_id: offer.trip_id,
            driver_id: driver_id.to_string(),
            outcome: OfferOutcome::Declined,
            reason: None,
        })
    }

    /// The dispatcher closes an open offer: `Lapsed` (unanswered in time; the driver is
    /// excluded from the trip) or `Withdrawn` (the driver went away). `None` if the offer
    /// was no longer open — answered or closed with its trip meanwhile.
    pub async fn close_offer(
        &self,
        offer_id: &str,
        state: OfferState,
        reason: Option<WithdrawReason>,
        fence: &Fence,
        now: Timestamp,
    ) -> Result<Option<ClosedOffer>, StoreError> {
        let label = match state {
            OfferState::Lapsed => "lapsed",
            _ => "withdrawn",
        };
        let closed = retrying(|| async {
            let now = now.millis();
            let (_turn, mut tx) = self.begin_write().await?;
            if !check_fence(&mut tx, fence).await? {
                tx.rollback().await?;
                return Ok(Err(StoreError::Fenced));
            }
            let row = sqlx::query(
                "UPDATE offers SET state = $1, closed_at = $2, withdraw_reason = $3 \
                 WHERE id = $4 AND state = 'open' RETURNING trip_id, driver_id",
            )
            .bind(label)
            .bind(now)
            .bind(reason.map(WithdrawReason::as_str))
            .bind(offer_id)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(row) = row else {
                tx.rollback().await?;
                return Ok(Ok(None));
            };
            let trip_id: String = row.try_get("trip_id")?;
            let driver_id: String = row.try_get("driver_id")?;
            if state == OfferState::Lapsed {
                insert_exclusion(&mut tx, &trip_id, &driver_id, "offer_lapsed").await?;
            }
            tx.commit().await?;
            Ok(Ok(Some((trip_id, driver_id))))
        })
        .await??;
        Ok(closed.map(|(trip_id, driver_id)| ClosedOffer {
            offer_id: offer_id.to_string(),
            trip_id,
            driver_id,
            outcome: state.outcome(),
            reason,
        }))
    }

    /// Every open offer: what a new leader adopts.
    pub async fn open_offers(&self) -> Result<Vec<OfferRecord>, StoreError> {
        let sql = format!("SELECT {OFFER_COLUMNS} FROM offers WHERE state = 'open'");
        let rows = retrying(|| async {
            sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                .fetch_all(&self.pool()?)
                .await
        })
        .await?;
        rows.iter().map(offer_from_row).collect()
    }

    /// The open offer a driver holds, with its trip: re-sent when the driver reconnects.
    pub async fn open_offer_of_driver(
        &self,
        driver_id: &str,
    ) -> Result<Option<(NewOffer, Trip)>, StoreError> {
        let sql =
            format!("SELECT {OFFER_COLUMNS} FROM offers WHERE driver_id = $1 AND state = 'open'");
        let row = self.row_for(&sql, driver_id).await?;
        let Some(record) = row.map(|row| offer_from_row(&row)).transpose()? else {
            return Ok(None);
        };
        let trip = self.trip(&record.offer.trip_id).await?;
        Ok(trip
            .filter(|trip| trip.state == TripState::Requested)
            .map(|trip| (record.offer, trip)))
    }

    /// The most recent offers as audit log lines, oldest first: each offer once, with
    /// what became of it so far.
    pub async fn recent_offers(&self, limit: i64) -> Result<Vec<OfferLog>, StoreError> {
        let sql = format!("SELECT {OFFER_COLUMNS} FROM offers ORDER BY made_at DESC LIMIT $1");
        let rows = retrying(|| async {
            sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                .bind(limit)
                .fetch_all(&self.pool()?)
                .await
        })
        .await?;
        let mut lines = rows
            .iter()
            .map(|row| {
                let record = offer_from_row(row)?;
                let mut line = record.offer.log();
                line.outcome = record.state.outcome();
                line.at = record.closed_at.unwrap_or(record.offer.made_at);
                Ok(line)
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        lines.reverse();
        Ok(lines)
    }

    /// The log lines of every offer made since `since`: its making, then its outcome if it
    /// closed (for the figures after a restart).
    pub async fn offer_lines_since(&self, since: Timestamp) -> Result<Vec<OfferLog>, StoreError> {
        let sql =
            format!("SELECT {OFFER_COLUMNS} FROM offers WHERE made_at >= $1 ORDER BY made_at");
        let rows = retrying(|| async {
            sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                .bind(since.millis())
                .fetch_all(&self.pool()?)
                .await
        })
        .await?;
        let mut lines = Vec::with_capacity(rows.len() * 2);
        for row in &rows {
            let record = offer_from_row(row)?;
            lines.push(record.offer.log());
            if let Some(closed_at) = record.closed_at {
                let mut line = record.offer.log();
                line.outcome = record.state.outcome();
                line.at = closed_at;
                lines.push(line);
            }
        }
        Ok(lines)
    }

    /// Trips still `requested`, each with the drivers never to be offered it again.
    /// Two reads whatever the number of trips: the leader re-reads this every few
    /// seconds.
    pub async fn waiting_trips(&self) -> Result<Vec<(Trip, Vec<String>)>, StoreError> {
        let trips = self.trips_in_states(&[TripState::Requested]).await?;
        let rows = retrying(|| async {
            sqlx::query(
                "SELECT e.trip_id, e.driver_id FROM trip_exclusions e \
                 JOIN trips t ON t.id = e.trip_id WHERE t.state = 'requested'",
            )
            .fetch_all(&self.pool()?)
            .await
        })
        .await?;
        let mut excluded: HashMap<String, Vec<String>> = HashMap::new();
        for row in rows {
            excluded
                .entry(row.try_get("trip_id")?)
                .or_default()
                .push(row.try_get("driver_id")?);
        }
        Ok(trips
            .into_iter()
            .map(|trip| {
                let drivers = excluded.remove(&trip.id).unwrap_or_default();
                (trip, drivers)
            })
            .collect())
    }
}

fn offer_from_row(row: &AnyRow) -> Result<OfferRecord, StoreError> {
    let state: String = row.try_get("state")?;
    let reason: Option<String> = row.try_get("withdraw_reason")?;
    let rank: i64 = row.try_get("candidate_rank")?;
    let candidates: i64 = row.try_get("candidates")?;
    let window_ms: Option<i64> = row.try_get("batch_window_ms")?;
    let size: Option<i64> = row.try_get("batch_size")?;
    let solve_us: Option<i64> = row.try_get("batch_solve_us")?;
    let batch = match (window_ms, size, solve_us) {
        (Some(window_ms), Some(size), Some(solve_us)) => Some(BatchInfo {
            window_ms: window_ms.max(0) as u64,
            size: size.try_into().unwrap_or(u32::MAX),
            solve_us: solve_us.max(0) as u64,
        }),
        _ => None,
    };
    Ok(OfferRecord {
        offer: NewOffer {
            id: row.try_get("id")?,
            trip_id: row.try_get("trip_id")?,
            driver_id: row.try_get("driver_id")?,
            made_at: Timestamp(row.try_get("made_at")?),
            expires_at: Timestamp(row.try_get("expires_at")?),
            pickup_distance_m: row.try_get("pickup_distance_m")?,
            pickup_eta_s: row.try_get("pickup_eta_s")?,
            rank: rank.try_into().unwrap_or(u32::MAX),
            candidates: candidates.try_into().unwrap_or(u32::MAX),
            radius_m: row.try_get("radius_m")?,
            batch,
        },
        epoch: row.try_get("epoch")?,
        state: OfferState::parse(&state)
            .ok_or_else(|| StoreError::Corrupt(format!("offer state {state}")))?,
        closed_at: row.try_get::<Option<i64>, _>("closed_at")?.map(Timestamp),
        withdraw_reason: reason.as_deref().and_then(WithdrawReason::parse),
    })
}
