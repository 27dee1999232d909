//! The store: the source of truth (DESIGN §1). sqlx over SQLite (embedded default) or
//! PostgreSQL, through sqlx's `Any` driver so both run the very same queries.
//!
//! Every trip change is one transaction: `UPDATE trips ... WHERE id = $1 AND seq = $old`
//! (the optimistic version check) plus one `trip_events` row at the new seq. Constraints —
//! not only code — forbid double assignment (see `migrations/0001_init.sql`). Transactions
//! that lose a race or hit a serialization failure are retried a bounded number of times.

use std::{
    borrow::Cow,
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use rand::RngExt;
use sha2::{Digest, Sha256};
use sqlx::{
    AnyPool, Row, SqlSafeStr,
    any::{AnyPoolOptions, AnyRow},
    migrate::{Migration, MigrationType, Migrator},
};

use crate::{
    error::ApiError,
    geometry::LatLng,
    trip::{Change, EventKind, InvalidTransition, Money, Timestamp, Trip, TripEvent, TripState},
};

/// The schema, embedded so the binary migrates any empty database on its own.
const MIGRATIONS: &[(i64, &str, &str)] =
    &[(1, "init", include_str!("../migrations/0001_init.sql"))];

/// How often a transaction that lost a race or hit a serialization failure is tried again.
const MAX_ATTEMPTS: u32 = 8;

/// Most terminal trips in an operator snapshot (DESIGN §3).
pub const SNAPSHOT_TERMINAL_TRIPS: i64 = 1_000;

/// Most events in one page of `events_after`.
pub const EVENTS_PAGE: i64 = 1_000;

const TRIP_COLUMNS: &str = "id, state, seq, passenger_id, driver_id, pickup_lat, pickup_lng, \
     dropoff_lat, dropoff_lng, fare_estimate_amount, fare_amount, currency, requested_at, updated_at";

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Passenger,
    Driver,
    Operator,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::Passenger => "passenger",
            Role::Driver => "driver",
            Role::Operator => "operator",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    #[error(transparent)]
    InvalidTransition(#[from] InvalidTransition),
    /// A precondition the caller checks on the fresh trip (e.g. "this is your trip").
    #[error("{0}")]
    Rejected(ApiError),
    #[error("the driver already has an active trip")]
    DriverBusy,
    #[error("the passenger already has an active trip")]
    PassengerBusy,
    #[error("this Idempotency-Key was already used for a different trip")]
    IdempotencyKeyReused,
    #[error("too much contention on this trip; retry")]
    Contention,
    #[error("the store is unreachable: {0}")]
    Unavailable(sqlx::Error),
    #[error("store error: {0}")]
    Database(sqlx::Error),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        match &error {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::WorkerCrashed => StoreError::Unavailable(error),
            sqlx::Error::Database(db) => match db.code().as_deref() {
                // PostgreSQL: admin shutdown, cannot connect now, connection failures.
                Some("57P01" | "57P02" | "57P03" | "08000" | "08003" | "08006" | "08001") => {
                    StoreError::Unavailable(error)
                }
                // SQLite: disk I/O error, cannot open the file.
                Some("10" | "14") => StoreError::Unavailable(error),
                _ => StoreError::Database(error),
            },
            _ => StoreError::Database(error),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> ApiError {
        match error {
            StoreError::NotFound => ApiError::not_found("trip"),
            StoreError::InvalidTransition(e) => {
                ApiError::conflict("invalid_transition", e.to_string())
            }
            StoreError::Rejected(e) => e,
            StoreError::DriverBusy => {
                ApiError::conflict("driver_busy", StoreError::DriverBusy.to_string())
            }
            StoreError::PassengerBusy => ApiError::conflict(
                "active_trip_exists",
                "you already have an active trip; cancel or finish it first",
            ),
            StoreError::IdempotencyKeyReused => ApiError::conflict(
                "idempotency_key_reused",
                StoreError::IdempotencyKeyReused.to_string(),
            ),
            StoreError::Contention => {
                ApiError::unavailable("too much contention on this trip; retry")
            }
            StoreError::Unavailable(e) => {
                tracing::warn!(error = %e, "store unavailable");
                ApiError::unavailable("the store is unavailable; nothing was changed, retry later")
            }
            StoreError::Database(e) => {
                tracing::error!(error = %e, "store error");
                ApiError::internal()
            }
            StoreError::Corrupt(e) => {
                tracing::error!(error = %e, "corrupt row");
                ApiError::internal()
            }
        }
    }
}

/// A committed trip change: the trip before it and the event it produced.
#[derive(Debug, Clone)]
pub struct Transition {
    pub before: Trip,
    pub event: TripEvent,
}

/// A newly created account and its bearer token (shown once).
#[derive(Debug, Clone)]
pub struct NewAccount {
    pub id: String,
    pub token: String,
}

/// What [`Store::create_trip`] did.
#[derive(Debug, Clone)]
pub enum Creation {
    /// A new trip, with its `requested` event.
    Created(TripEvent),
    /// A retry with a known idempotency key: the trip created first, as it is now.
    Existing(Trip),
}

/// A request for a new trip, already validated.
#[derive(Debug, Clone)]
pub struct NewTrip {
    pub passenger_id: String,
    pub pickup: LatLng,
    pub dropoff: LatLng,
    pub fare_estimate: Money,
    pub idempotency_key: Option<String>,
}

/// Cheap to clone: the pool is an `Arc` inside.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: &'static str,
    /// While set, every operation fails as if the database were unreachable: outage
    /// drills and tests of the 503 path on stores that cannot be stopped from outside.
    simulated_outage: Arc<AtomicBool>,
}

impl Store {
    /// Connects, creating a missing SQLite file, and brings the schema up to date.
    /// Migrations take PostgreSQL's advisory lock, so several nodes may start at once.
    pub async fn connect(
        database_url: &str,
        max_connections: u32,
        acquire_timeout: Duration,
    ) -> anyhow::Result<Store> {
        sqlx::any::install_default_drivers();
        let (url, backend) = if database_url.starts_with("sqlite:") {
            let url = if database_url.contains("mode=") || database_url.contains(":memory:") {
                database_url.to_string()
            } else if database_url.contains('?') {
                format!("{database_url}&mode=rwc")
            } else {
                format!("{database_url}?mode=rwc")
            };
            (url, "sqlite")
        } else if database_url.starts_with("postgres:") || database_url.starts_with("postgresql:") {
            (database_url.to_string(), "postgres")
        } else {
            anyhow::bail!("HAIL_DATABASE_URL must start with sqlite:// or postgres://");
        };
        let mut options = AnyPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(acquire_timeout);
        if backend == "sqlite" {
            // A file has no server that drops idle connections: no pings, no reaping.
            // (This also keeps the pool free of timers, so tests can pause tokio's clock.)
            options = options
                .test_before_acquire(false)
                .idle_timeout(None)
                .max_lifetime(None);
        }
        let pool = options
            .after_connect(move |connection, _| {
                Box::pin(async move {
                    if backend == "sqlite" {
                        // WAL lets readers run beside the writer; FULL syncs the WAL on
                        // every commit, so an acknowledged change survives power loss,
                        // not only kill -9.
                        sqlx::raw_sql(
                            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
                             PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000;",
                        )
                        .execute(&mut *connection)
                        .await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await?;
        let migrations = MIGRATIONS
            .iter()
            .map(|(version, description, sql)| {
                Migration::new(
                    *version,
                    Cow::Borrowed(*description),
                    MigrationType::Simple,
                    sqlx::AssertSqlSafe(*sql).into_sql_str(),
                    false,
                )
            })
            .collect();
        let migrator = Migrator::with_migrations(migrations);
        // PostgreSQL serializes nodes migrating at once with an advisory lock; SQLite has
        // none, so a process that lost the race sees the winner's schema on a retry.
        let mut attempt = 0;
        while let Err(error) = migrator.run(&pool).await {
            attempt += 1;
            if attempt == MAX_ATTEMPTS {
                return Err(error.into());
            }
            tracing::debug!(%error, attempt, "migration raced another node; retrying");
            backoff(attempt).await;
        }
        Ok(Store {
            pool,
            backend,
            simulated_outage: Arc::default(),
        })
    }

    /// The pool, unless an outage is being simulated.
    fn pool(&self) -> Result<&AnyPool, sqlx::Error> {
        if self.simulated_outage.load(Ordering::Relaxed) {
            let error =
                std::io::Error::new(std::io::ErrorKind::NotConnected, "simulated store outage");
            return Err(sqlx::Error::Io(error));
        }
        Ok(&self.pool)
    }

    /// Makes the store act unreachable (`true`) or reachable again (`false`).
    pub fn simulate_outage(&self, down: bool) {
        self.simulated_outage.store(down, Ordering::Relaxed);
    }

    pub fn backend(&self) -> &'static str {
        self.backend
    }

    /// Readiness: the store answers a query.
    pub async fn ping(&self) -> Result<(), StoreError> {
        retrying(|| async { sqlx::query("SELECT 1").execute(self.pool()?).await }).await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    pub async fn create_account(
        &self,
        role: Role,
        name: &str,
        vehicle_plate: Option<&str>,
    ) -> Result<NewAccount, StoreError> {
        let prefix = if role == Role::Driver { "drv" } else { "psg" };
        let account = NewAccount {
            id: new_id(prefix),
            token: new_token(),
        };
        let hash = token_hash(&account.token);
        let created_at = Timestamp::now().millis();
        retrying(|| async {
            sqlx::query(
                "INSERT INTO accounts (id, role, name, vehicle_plate, token_hash, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(&account.id)
            .bind(role.as_str())
            .bind(name)
            .bind(vehicle_plate)
            .bind(&hash)
            .bind(created_at)
            .execute(self.pool()?)
            .await
        })
        .await?;
        Ok(account)
    }

    /// The account a token belongs to: (id, role).
    pub async fn authenticate(&self, token: &str) -> Result<Option<(String, Role)>, StoreError> {
        let row = retrying(|| async {
            sqlx::query("SELECT id, role FROM accounts WHERE token_hash = $1")
                .bind(token_hash(token))
                .fetch_optional(self.pool()?)
                .await
        })
        .await?;
        row.map(|row| {
            let role = match row.try_get::<String, _>("role")?.as_str() {
                "driver" => Role::Driver,
                _ => Role::Passenger,
            };
            Ok((row.try_get("id")?, role))
        })
        .transpose()
    }

    pub async fn account_role(&self, id: &str) -> Result<Option<Role>, StoreError> {
        let role: Option<String> = retrying(|| async {
            sqlx::query_scalar("SELECT role FROM accounts WHERE id = $1")
                .bind(id)
                .fetch_optional(self.pool()?)
                .await
        })
        .await?;
        Ok(role.map(|role| {
            if role == "driver" {
                Role::Driver
            } else {
                Role::Passenger
            }
        }))
    }

    /// Creates a trip with its `requested` event (seq 1). With an idempotency key, a retry
    /// of the same request returns the trip created first (`created == false`).
    pub async fn create_trip(&self, new: NewTrip) -> Result<Creation, StoreError> {
        if let Some(existing) = self.trip_by_idempotency_key(&new).await? {
            return Ok(Creation::Existing(existing));
        }
        let now = Timestamp::now();
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
            trip: trip.clone(),
        };
        let result = retrying(|| async {
            let mut tx = self.pool()?.begin().await?;
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
                .fetch_optional(self.pool()?)
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
        let row = retrying(|| async {
            sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                .bind(id)
                .fetch_optional(self.pool()?)
                .await
        })
        .await?;
        row.map(|row| trip_from_row(&row)).transpose()
    }

    /// Applies `change` to the trip's current version. `guard` sees the fresh trip first and
    /// may refuse (ownership, offers). Lost races are retried against the new version, so a
    /// change that no longer fits fails with `InvalidTransition`, never silently.
    pub async fn transition(
        &self,
        trip_id: &str,
        change: &Change,
        guard: impl Fn(&Trip) -> Result<(), StoreError>,
    ) -> Result<Transition, StoreError> {
        for attempt in 0..MAX_ATTEMPTS {
            let before = self.trip(trip_id).await?.ok_or(StoreError::NotFound)?;
            guard(&before)?;
            let now = Timestamp::now().max(before.updated_at);
            let after = before.apply(change, now)?;
            let event = TripEvent {
                trip_id: after.id.clone(),
                seq: after.seq,
                event: change.event_kind(),
                at: now,
                trip: after.clone(),
            };
            match self.commit_transition(&before, &event).await {
                Ok(true) => return Ok(Transition { before, event }),
                Ok(false) => {}
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

    /// `Ok(false)` when another change got there first (the version moved on).
    async fn commit_transition(
        &self,
        before: &Trip,
        event: &TripEvent,
    ) -> Result<bool, sqlx::Error> {
        let after = &event.trip;
        let mut tx = self.pool()?.begin().await?;
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
            return Ok(false);
        }
        insert_event(&mut tx, event).await?;
        if event.event == EventKind::DriverCancelled
            && let Some(driver_id) = &before.driver_id
        {
            insert_exclusion(&mut tx, &after.id, driver_id, "driver_cancelled").await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Events with seq > `after`, in order, at most [`EVENTS_PAGE`].
    pub async fn events_after(
        &self,
        trip_id: &str,
        after: i64,
    ) -> Result<Vec<TripEvent>, StoreError> {
        let rows = retrying(|| async {
            sqlx::query(
                "SELECT seq, event, at, trip FROM trip_events WHERE trip_id = $1 AND seq > $2 \
             ORDER BY seq LIMIT $3",
            )
            .bind(trip_id)
            .bind(after)
            .bind(EVENTS_PAGE)
            .fetch_all(self.pool()?)
            .await
        })
        .await?;
        rows.iter()
            .map(|row| {
                let event: String = row.try_get("event")?;
                let trip: String = row.try_get("trip")?;
                Ok(TripEvent {
                    trip_id: trip_id.to_string(),
                    seq: row.try_get("seq")?,
                    event: EventKind::parse(&event)
                        .ok_or_else(|| StoreError::Corrupt(format!("event {event}")))?,
                    at: Timestamp(row.try_get("at")?),
                    trip: serde_json::from_str(&trip)
                        .map_err(|e| StoreError::Corrupt(e.to_string()))?,
                })
            })
            .collect()
    }

    /// Remembers that `driver_id` must not be offered `trip_id` again.
    pub async fn add_exclusion(
        &self,
        trip_id: &str,
        driver_id: &str,
        reason: &str,
    ) -> Result<(), StoreError> {
        retrying(|| async {
            let mut connection = self.pool()?.acquire().await?;
            insert_exclusion(&mut connection, trip_id, driver_id, reason).await
        })
        .await?;
        Ok(())
    }

    pub async fn exclusions(&self, trip_id: &str) -> Result<Vec<String>, StoreError> {
        Ok(retrying(|| async {
            sqlx::query_scalar("SELECT driver_id FROM trip_exclusions WHERE trip_id = $1")
                .bind(trip_id)
                .fetch_all(self.pool()?)
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
                .fetch_all(self.pool()?)
                .await
        })
        .await?;
        rows.iter().map(trip_from_row).collect()
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
                .fetch_all(self.pool()?)
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
        let row = retrying(|| async {
            sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                .bind(driver_id)
                .fetch_optional(self.pool()?)
                .await
        })
        .await?;
        row.map(|row| trip_from_row(&row)).transpose()
    }
}

async fn insert_event(
    connection: &mut sqlx::AnyConnection,
    event: &TripEvent,
) -> Result<(), sqlx::Error> {
    let trip = serde_json::to_string(&event.trip).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    sqlx::query(
        "INSERT INTO trip_events (trip_id, seq, event, at, trip) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&event.trip_id)
    .bind(event.seq)
    .bind(event.event.as_str())
    .bind(event.at.millis())
    .bind(trip)
    .execute(&mut *connection)
    .await?;
    Ok(())
}

async fn insert_exclusion(
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

fn trip_from_row(row: &AnyRow) -> Result<Trip, StoreError> {
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

enum Unique {
    Driver,
    Passenger,
    IdempotencyKey,
}

/// Which of our unique constraints `error` violated. PostgreSQL names the index; SQLite
/// only lists the columns, so both are checked.
fn unique_violation(error: &sqlx::Error) -> Option<Unique> {
    let sqlx::Error::Database(db) = error else {
        return None;
    };
    if !db.is_unique_violation() {
        return None;
    }
    let text = format!("{} {}", db.constraint().unwrap_or_default(), db.message());
    if text.contains("idempotency_key") {
        Some(Unique::IdempotencyKey)
    } else if text.contains("one_active_per_driver") || text.contains("trips.driver_id") {
        Some(Unique::Driver)
    } else if text.contains("one_active_per_passenger") || text.contains("trips.passenger_id") {
        Some(Unique::Passenger)
    } else {
        None
    }
}

/// Serialization failures and deadlocks (PostgreSQL and PostgreSQL-wire databases under
/// SERIALIZABLE — where even a lone read can be cancelled "during read") and SQLite's
/// busy/locked answers: the statement did nothing, try again. Reads go through
/// [`retrying`] as much as writes do.
fn is_retryable(error: &sqlx::Error) -> bool {
    let sqlx::Error::Database(db) = error else {
        return false;
    };
    matches!(
        db.code().as_deref(),
        Some("40001" | "40P01" | "5" | "6" | "261" | "517")
    )
}

/// Runs a write until it does not fail with a retryable error, at most [`MAX_ATTEMPTS`]
/// times.
async fn retrying<T, F, Fut>(mut operation: F) -> Result<T, sqlx::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, sqlx::Error>>,
{
    let mut attempt = 0;
    loop {
        match operation().await {
            Err(error) if is_retryable(&error) && attempt + 1 < MAX_ATTEMPTS => {
                backoff(attempt).await;
                attempt += 1;
            }
            result => return result,
        }
    }
}

async fn backoff(attempt: u32) {
    let base_ms = 2u64 << attempt.min(6);
    let jitter_ms = rand::rng().random_range(0..=base_ms);
    tokio::time::sleep(Duration::from_millis(base_ms + jitter_ms)).await;
}

/// An opaque id: a short kind prefix and 100 random bits.
pub fn new_id(prefix: &str) -> String {
    const ALPHABET: &[u8] = b"0123456789abcdefghjkmnpqrstvwxyz";
    let mut rng = rand::rng();
    let suffix: String = (0..20)
        .map(|_| ALPHABET[rng.random_range(0..32)] as char)
        .collect();
    format!("{prefix}_{suffix}")
}

/// A bearer token: 256 random bits, hex.
pub fn new_token() -> String {
    let bytes: [u8; 32] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn token_hash(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
