//! What operators look up beyond the live view: trips flagged because their driver
//! vanished, accounts and trips by id, name or plate, why a driver is kept off a trip, and
//! the recent history the console's figures are rebuilt from after a restart.

use sqlx::{Row, any::AnyRow};

use super::{Store, StoreError, retrying, trips::trip_from_row};
use crate::trip::{EventKind, Role, Timestamp, Trip};

/// Most rows of each kind a search returns.
pub const SEARCH_LIMIT: i64 = 20;

/// A ride under way whose driver was lost (its latest event is `driver_lost`).
#[derive(Debug, Clone, PartialEq)]
pub struct LostRide {
    pub trip_id: String,
    pub at: Timestamp,
    pub reason: Option<String>,
}

/// An account as operators see it.
#[derive(Debug, Clone, PartialEq)]
pub struct AccountRecord {
    pub id: String,
    pub role: Role,
    pub name: String,
    pub plate: Option<String>,
}

/// One committed event, reduced to what the figures count.
#[derive(Debug, Clone, PartialEq)]
pub struct PastEvent {
    pub event: EventKind,
    pub at: Timestamp,
    pub requested_at: Timestamp,
}

/// `text` as a LIKE pattern matching itself literally (`\` escapes).
fn literal(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_")
}

impl Store {
    /// Rides under way whose latest event says their driver was lost.
    pub async fn lost_rides(&self) -> Result<Vec<LostRide>, StoreError> {
        let rows = retrying(|| async {
            sqlx::query(
                "SELECT e.trip_id, e.at, e.reason FROM trips t \
                 JOIN trip_events e ON e.trip_id = t.id AND e.seq = t.seq \
                 WHERE t.state = 'in_progress' AND e.event = 'driver_lost' ORDER BY e.at",
            )
            .fetch_all(&self.pool()?)
            .await
        })
        .await?;
        rows.iter()
            .map(|row| {
                Ok(LostRide {
                    trip_id: row.try_get("trip_id")?,
                    at: Timestamp(row.try_get("at")?),
                    reason: row.try_get("reason")?,
                })
            })
            .collect()
    }

    /// A passenger's or driver's account.
    pub async fn account(&self, id: &str) -> Result<Option<AccountRecord>, StoreError> {
        let row = self
            .row_for(
                "SELECT id, role, name, vehicle_plate FROM accounts WHERE id = $1",
                id,
            )
            .await?;
        row.map(|row| account_from_row(&row)).transpose()
    }

    /// Accounts whose id is or starts with `text`, or whose name or plate contains it
    /// (case-insensitive).
    pub async fn find_accounts(&self, text: &str) -> Result<Vec<AccountRecord>, StoreError> {
        let prefix = format!("{}%", literal(text));
        let within = format!("%{}%", literal(&text.to_lowercase()));
        let rows = retrying(|| async {
            sqlx::query(
                "SELECT id, role, name, vehicle_plate FROM accounts \
                 WHERE id = $1 OR id LIKE $2 ESCAPE '\\' OR LOWER(name) LIKE $3 ESCAPE '\\' \
                 OR LOWER(vehicle_plate) LIKE $3 ESCAPE '\\' ORDER BY id LIMIT $4",
            )
            .bind(text)
            .bind(&prefix)
            .bind(&within)
            .bind(SEARCH_LIMIT * 2)
            .fetch_all(&self.pool()?)
            .await
        })
        .await?;
        rows.iter().map(account_from_row).collect()
    }

    /// Trips whose id is or starts with `text`.
    pub async fn find_trips(&self, text: &str) -> Result<Vec<Trip>, StoreError> {
        let sql = format!(
            "SELECT {} FROM trips WHERE id = $1 OR id LIKE $2 ESCAPE '\\' \
             ORDER BY requested_at DESC LIMIT $3",
            super::trips::TRIP_COLUMNS
        );
        let prefix = format!("{}%", literal(text));
        let rows = retrying(|| async {
            sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                .bind(text)
                .bind(&prefix)
                .bind(SEARCH_LIMIT)
                .fetch_all(&self.pool()?)
                .await
        })
        .await?;
        rows.iter().map(trip_from_row).collect()
    }

    /// The account's most recent trip, as passenger or driver.
    pub async fn latest_trip_of(&self, account_id: &str) -> Result<Option<Trip>, StoreError> {
        let sql = format!(
            "SELECT {} FROM trips WHERE passenger_id = $1 OR driver_id = $1 \
             ORDER BY requested_at DESC LIMIT 1",
            super::trips::TRIP_COLUMNS
        );
        let row = self.row_for(&sql, account_id).await?;
        row.map(|row| trip_from_row(&row)).transpose()
    }

    /// The drivers never to be offered this trip again, and why (`declined`,
    /// `offer_lapsed`, `driver_cancelled`, `driver_lost`).
    pub async fn exclusion_reasons(
        &self,
        trip_id: &str,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let rows = retrying(|| async {
            sqlx::query("SELECT driver_id, reason FROM trip_exclusions WHERE trip_id = $1")
                .bind(trip_id)
                .fetch_all(&self.pool()?)
                .await
        })
        .await?;
        rows.iter()
            .map(|row| Ok((row.try_get("driver_id")?, row.try_get("reason")?)))
            .collect()
    }

    /// Every event since `since`, oldest first, for the figures.
    pub async fn events_since(&self, since: Timestamp) -> Result<Vec<PastEvent>, StoreError> {
        let rows = retrying(|| async {
            sqlx::query(
                "SELECT e.event, e.at, t.requested_at FROM trip_events e \
                 JOIN trips t ON t.id = e.trip_id WHERE e.at >= $1 ORDER BY e.at",
            )
            .bind(since.millis())
            .fetch_all(&self.pool()?)
            .await
        })
        .await?;
        rows.iter()
            .map(|row| {
                let event: String = row.try_get("event")?;
                Ok(PastEvent {
                    event: EventKind::parse(&event)
                        .ok_or_else(|| StoreError::Corrupt(format!("event {event}")))?,
                    at: Timestamp(row.try_get("at")?),
                    requested_at: Timestamp(row.try_get("requested_at")?),
                })
            })
            .collect()
    }
}

fn account_from_row(row: &AnyRow) -> Result<AccountRecord, StoreError> {
    let role: String = row.try_get("role")?;
    Ok(AccountRecord {
        id: row.try_get("id")?,
        role: Role::parse(&role)
            .ok_or_else(|| StoreError::Corrupt(format!("account role {role}")))?,
        name: row.try_get("name")?,
        plate: row.try_get("vehicle_plate")?,
    })
}

#[cfg(test)]
mod tests {
    use super::literal;

    #[test]
    fn like_patterns_match_text_literally() {
        assert_eq!(literal("50%_a\\b"), "50\\%\\_a\\\\b");
    }
}
