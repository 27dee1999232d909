//! The store: the source of truth (DESIGN §1). sqlx over SQLite (embedded default) or
//! PostgreSQL, through sqlx's `Any` driver so both run the very same queries.
//!
//! Every trip change is one transaction: `UPDATE trips ... WHERE id = $1 AND seq = $old`
//! (the optimistic version check) plus one `trip_events` row at the new seq, plus what the
//! change implies for offers ([`trips`]). Offers are rows ([`offers`]); the dispatch lease
//! and the node list are rows too ([`cluster`]). Constraints — not only code — forbid
//! double assignment and double offers (see `migrations/`). Transactions that lose a race
//! or hit a serialization failure are retried a bounded number of times.

mod accounts;
mod cluster;
pub mod hosts;
mod offers;
mod operators;
mod oversight;
mod trips;

use std::{
    borrow::Cow,
    future::Future,
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use rand::RngExt;
use sqlx::{
    AnyPool, SqlSafeStr,
    any::AnyPoolOptions,
    migrate::{Migration, MigrationType, Migrator},
};

pub use cluster::{Fence, Lease, NodeRow};
pub use offers::{NewOffer, OfferRecord, OfferState};
pub use operators::OperatorRecord;
pub use oversight::{AccountRecord, LostRide, PastEvent, SEARCH_LIMIT};
pub use trips::{Cause, ClosedOffer, Creation, NewTrip, Transition};

use crate::trip::InvalidTransition;

/// The schema, embedded so the binary migrates any empty database on its own.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "init", include_str!("../../migrations/0001_init.sql")),
    (
        2,
        "cluster",
        include_str!("../../migrations/0002_cluster.sql"),
    ),
    (
        3,
        "operators",
        include_str!("../../migrations/0003_operators.sql"),
    ),
    (
        4,
        "oversight",
        include_str!("../../migrations/0004_oversight.sql"),
    ),
    (5, "batch", include_str!("../../migrations/0005_batch.sql")),
];

/// How often a transaction that lost a race or hit a serialization failure is tried again.
const MAX_ATTEMPTS: u32 = 8;

/// PostgreSQL ends a transaction whose client went quiet in the middle of it for this
/// long. hail's transactions never wait on anything but the database between statements,
/// so only a stopped process (SIGSTOP, a stalled VM) trips it — and such a process must
/// not keep holding row locks, above all the dispatch lease's, which would keep every
/// standby from taking over.
const IDLE_IN_TRANSACTION_MS: u64 = 2_000;

/// Most terminal trips in an operator snapshot (DESIGN §3).
pub const SNAPSHOT_TERMINAL_TRIPS: i64 = 1_000;

/// Most events in one page of `events_after`.
pub const EVENTS_PAGE: i64 = 1_000;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error(transparent)]
    InvalidTransition(#[from] InvalidTransition),
    /// The trip exists but the caller may not change it (answered like an unknown one).
    #[error("not this caller's trip")]
    NotYours,
    #[error("the driver already has an active trip")]
    DriverBusy,
    #[error("the passenger already has an active trip")]
    PassengerBusy,
    #[error("this Idempotency-Key was already used for a different trip")]
    IdempotencyKeyReused,
    #[error("the offer lapsed")]
    OfferLapsed,
    #[error("the offer was withdrawn")]
    OfferWithdrawn,
    #[error("the offer was already answered")]
    OfferAnswered,
    /// The offer was open but its trip is no longer waiting.
    #[error("the trip is no longer available")]
    TripGone,
    /// Dispatch: the driver holds another open offer (unique index).
    #[error("the driver holds another open offer")]
    DriverHasOffer,
    /// Dispatch: the trip has an open offer already (unique index).
    #[error("the trip has an open offer")]
    TripHasOffer,
    /// Dispatch: the writer's lease epoch is not the current one; it must step down.
    #[error("the dispatch lease moved on: this node no longer leads dispatch")]
    Fenced,
    #[error("too much contention; retry")]
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
                // PostgreSQL: admin shutdown, cannot connect now, connection failures,
                // and a read-only transaction (a standby that has not been promoted).
                Some(
                    "57P01" | "57P02" | "57P03" | "08000" | "08003" | "08006" | "08001" | "25006",
                ) => StoreError::Unavailable(error),
                // SQLite: disk I/O error, cannot open the file.
                Some("10" | "14") => StoreError::Unavailable(error),
                _ => StoreError::Database(error),
            },
            _ => StoreError::Database(error),
        }
    }
}

impl StoreError {
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

/// Cheap to clone: everything is behind an `Arc`.
#[derive(Clone)]
pub struct Store {
    backend: &'static str,
    shared: Arc<Shared>,
}

struct Shared {
    /// The pool of the database written to. A std `RwLock`, read (an `Arc` cloned) by
    /// every query and written only when a multi-host URL's writable host changes.
    pool: RwLock<AnyPool>,
    /// A multi-host PostgreSQL URL's hosts, each as a single-host URL ([`hosts`]).
    hosts: Vec<String>,
    max_connections: u32,
    acquire_timeout: Duration,
    /// No writable host is known (the primary was lost and none has been promoted, or
    /// two claim to be): fail at once with `Unavailable` rather than wait on a pool.
    lost: AtomicBool,
    /// While set, every operation fails as if the database were unreachable: outage
    /// drills and tests of the 503 path on stores that cannot be stopped from outside.
    simulated_outage: AtomicBool,
    /// SQLite has one writer. Without this, this process's write transactions meet at
    /// SQLite's lock: the loser's busy handler sleeps 1, 2, 5, 10… ms between tries (a
    /// timed build showed single writes of 20, 36, 54, 81, 130, 184, 238 ms: those sleeps
    /// added up, plus the write — the tail of request → offer at the process limit, README
    /// "Benchmarks"), each sleeper holding a store connection reads then lack. Here they
    /// queue in order instead, holding no connection: a tokio mutex, because the turn is
    /// held across the transaction's awaits. `None` on PostgreSQL, which locks rows.
    write_lane: Option<Arc<tokio::sync::Mutex<()>>>,
    /// Writes waiting for their turn in the lane (`/metrics`).
    writes_waiting: AtomicUsize,
}

/// A write transaction and, on SQLite, its turn in the write lane: hold both until the
/// transaction is committed or rolled back (`let (_turn, mut tx) = …`).
type WriteTransaction = (
    Option<tokio::sync::OwnedMutexGuard<()>>,
    sqlx::Transaction<'static, sqlx::Any>,
);

/// Pool settings per store: SQLite's pragmas, PostgreSQL's session limits.
fn pool_options(
    backend: &'static str,
    max_connections: u32,
    acquire_timeout: Duration,
) -> AnyPoolOptions {
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
    options.after_connect(move |connection, _| {
        Box::pin(async move {
            if backend == "sqlite" {
                // WAL lets readers run beside the writer; FULL syncs the WAL on every
                // commit, so an acknowledged change survives power loss, not only kill -9.
                sqlx::raw_sql(
                    "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
                     PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000;",
                )
                .execute(&mut *connection)
                .await?;
            } else {
                let set =
                    format!("SET idle_in_transaction_session_timeout = {IDLE_IN_TRANSACTION_MS}");
                sqlx::raw_sql(sqlx::AssertSqlSafe(set))
                    .execute(&mut *connection)
                    .await?;
            }
            Ok(())
        })
    })
}

impl Store {
    /// Connects, creating a missing SQLite file, and brings the schema up to date.
    /// Migrations take PostgreSQL's advisory lock, so several nodes may start at once.
    ///
    /// A PostgreSQL URL may name several hosts (`postgres://u@h1:5432,h2:5433/hail`, as
    /// libpq takes them): hail writes to the one that is not in recovery, and
    /// [`Store::follow_primary`] moves to another when it is lost ([`hosts`]).
    pub async fn connect(
        database_url: &str,
        max_connections: u32,
        acquire_timeout: Duration,
    ) -> anyhow::Result<Store> {
        sqlx::any::install_default_drivers();
        let (url, backend, hosts) = if database_url.starts_with("sqlite:") {
            let url = if database_url.contains("mode=") || database_url.contains(":memory:") {
                database_url.to_string()
            } else if database_url.contains('?') {
                format!("{database_url}&mode=rwc")
            } else {
                format!("{database_url}?mode=rwc")
            };
            (url, "sqlite", Vec::new())
        } else if database_url.starts_with("postgres:") || database_url.starts_with("postgresql:") {
            let hosts = hosts::split(database_url)?;
            let url = if hosts.len() > 1 {
                hosts::writable(&hosts, acquire_timeout)
                    .await
                    .map_err(anyhow::Error::msg)?
            } else {
                database_url.to_string()
            };
            (
                url,
                "postgres",
                if hosts.len() > 1 { hosts } else { Vec::new() },
            )
        } else {
            anyhow::bail!("HAIL_DATABASE_URL must start with sqlite:// or postgres://");
        };
        let pool = pool_options(backend, max_connections, acquire_timeout)
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
            backend,
            shared: Arc::new(Shared {
                pool: RwLock::new(pool),
                hosts,
                max_connections,
                acquire_timeout,
                lost: AtomicBool::new(false),
                simulated_outage: AtomicBool::new(false),
                write_lane: (backend == "sqlite").then(Arc::default),
                writes_waiting: AtomicUsize::new(0),
            }),
        })
    }

    /// Begins a transaction that will write. On SQLite it waits for its turn in the write
    /// lane first (before taking a connection, so waiting holds none), then takes SQLite's
    /// write lock at once (`BEGIN IMMEDIATE`): no read in it can go stale before it writes.
    async fn begin_write(&self) -> Result<WriteTransaction, sqlx::Error> {
        let pool = self.pool()?;
        let turn = self.write_turn().await;
        let tx = if turn.is_some() {
            pool.begin_with("BEGIN IMMEDIATE").await?
        } else {
            pool.begin().await?
        };
        Ok((turn, tx))
    }

    /// The write lane's turn (SQLite; `None` on PostgreSQL), for a statement that writes
    /// outside a transaction: hold it until the statement is done.
    async fn write_turn(&self) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        /// Counts a waiting write out again however its wait ends (a caller that gives
        /// up drops the future mid-wait).
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::Relaxed);
            }
        }
        let lane = self.shared.write_lane.clone()?;
        self.shared.writes_waiting.fetch_add(1, Ordering::Relaxed);
        let _waiting = Waiting(&self.shared.writes_waiting);
        Some(lane.lock_owned().await)
    }

    /// Writes waiting for SQLite's writer in this process (always 0 on PostgreSQL).
    pub fn writes_waiting(&self) -> usize {
        self.shared.writes_waiting.load(Ordering::Relaxed)
    }

    /// Store connections taken by queries now (of at most `HAIL_DB_MAX_CONNECTIONS`).
    pub fn connections_in_use(&self) -> usize {
        let pool = self
            .shared
            .pool
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        (pool.size() as usize).saturating_sub(pool.num_idle())
    }

    /// The pool, unless no writable database is known or an outage is being simulated.
    fn pool(&self) -> Result<AnyPool, sqlx::Error> {
        let shared = &self.shared;
        if shared.simulated_outage.load(Ordering::Relaxed) || shared.lost.load(Ordering::Relaxed) {
            let error = std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                "no writable database (outage, or waiting for a primary)",
            );
            return Err(sqlx::Error::Io(error));
        }
        Ok(shared
            .pool
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone())
    }

    /// Makes the store act unreachable (`true`) or reachable again (`false`).
    pub fn simulate_outage(&self, down: bool) {
        self.shared.simulated_outage.store(down, Ordering::Relaxed);
    }

    /// Whether the URL named several hosts, so [`Self::follow_primary`] has work to do.
    pub fn has_standbys(&self) -> bool {
        !self.shared.hosts.is_empty()
    }

    pub fn backend(&self) -> &'static str {
        self.backend
    }

    /// Readiness: the store answers a query.
    pub async fn ping(&self) -> Result<(), StoreError> {
        retrying(|| async { sqlx::query("SELECT 1").execute(&self.pool()?).await }).await?;
        Ok(())
    }

    pub async fn close(&self) {
        let pool = self
            .shared
            .pool
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        pool.close().await;
    }

    /// The row `sql` finds for one key (its one bind parameter), if any.
    async fn row_for(&self, sql: &str, key: &str) -> Result<Option<sqlx::any::AnyRow>, StoreError> {
        Ok(retrying(|| async {
            sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
                .bind(key)
                .fetch_optional(&self.pool()?)
                .await
        })
        .await?)
    }
}

enum Unique {
    Driver,
    Passenger,
    IdempotencyKey,
    OfferDriver,
    OfferTrip,
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
    } else if text.contains("offers_one_open_per_driver") || text.contains("offers.driver_id") {
        Some(Unique::OfferDriver)
    } else if text.contains("offers_one_open_per_trip") || text.contains("offers.trip_id") {
        Some(Unique::OfferTrip)
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

/// Runs an operation until it does not fail with a retryable error, at most
/// [`MAX_ATTEMPTS`] times.
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

#[cfg(test)]
mod tests {
    /// A migration file not in [`super::MIGRATIONS`] would never run (it happened).
    #[test]
    fn every_migration_file_is_embedded_in_order() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.ends_with(".sql"))
            .collect();
        files.sort();
        let embedded: Vec<String> = super::MIGRATIONS
            .iter()
            .map(|(version, name, _)| format!("{version:04}_{name}.sql"))
            .collect();
        assert_eq!(embedded, files);
    }
}
