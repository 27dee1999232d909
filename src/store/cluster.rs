//! The dispatch lease and the node list (DESIGN §1 "The cluster"). PostgreSQL is the
//! cluster's one source of truth, so leadership is a row there too: no consensus protocol
//! of our own.
//!
//! Safety never depends on clocks: every dispatch write checks, in its own transaction,
//! that the lease epoch is still the writer's ([`check_fence`]), and a new holder always
//! takes epoch + 1. Clocks (the nodes') only decide *when* a standby may take over a lease
//! whose holder stopped renewing it.

use sqlx::Row;

use super::{Store, StoreError, retrying};
use crate::trip::Timestamp;

/// The right to make dispatch writes: the node that holds the lease, and the epoch it
/// took it at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub holder: String,
    pub epoch: i64,
}

/// The lease row as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub holder: Option<String>,
    pub epoch: i64,
    pub expires_at: Timestamp,
}

/// A node as it last reported itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRow {
    pub id: String,
    pub url: String,
    pub drivers_connected: i64,
    pub sockets: i64,
    pub started_at: Timestamp,
    pub last_seen: Timestamp,
}

/// Whether `fence` still holds the lease, checked by *updating* the lease row: the row
/// lock orders this transaction against a takeover. If a takeover committed first, this
/// sees the new epoch (PostgreSQL re-reads a row updated under it; SQLite has one writer
/// at a time) and the caller must roll back; if this commits first, the takeover waits for
/// it, and the new leader then reads what this wrote.
pub(super) async fn check_fence(
    connection: &mut sqlx::AnyConnection,
    fence: &Fence,
) -> Result<bool, sqlx::Error> {
    let held = sqlx::query(
        "UPDATE dispatch_lease SET epoch = epoch WHERE name = 'dispatch' AND holder = $1 AND epoch = $2",
    )
    .bind(&fence.holder)
    .bind(fence.epoch)
    .execute(&mut *connection)
    .await?;
    Ok(held.rows_affected() == 1)
}

impl Store {
    /// Takes the lease for `holder` until `expires_at` if it is free: expired at `now`, or
    /// already this holder's (a restarted node). With `force`, takes it whatever its state
    /// — for a single node, which by configuration has no peer to take it from, after a
    /// restart. Returns the new fence, or the lease as it stands if taken.
    pub async fn acquire_lease(
        &self,
        holder: &str,
        now: Timestamp,
        expires_at: Timestamp,
        force: bool,
    ) -> Result<Result<Fence, Lease>, StoreError> {
        let sql = if force {
            "UPDATE dispatch_lease SET holder = $1, epoch = epoch + 1, expires_at = $2 \
             WHERE name = 'dispatch' RETURNING epoch"
        } else {
            "UPDATE dispatch_lease SET holder = $1, epoch = epoch + 1, expires_at = $2 \
             WHERE name = 'dispatch' AND (expires_at <= $3 OR holder = $1) RETURNING epoch"
        };
        let epoch: Option<i64> = retrying(|| async {
            let _turn = self.write_turn().await;
            let query = sqlx::query_scalar(sql)
                .bind(holder)
                .bind(expires_at.millis());
            let query = if force {
                query
            } else {
                query.bind(now.millis())
            };
            query.fetch_optional(&self.pool()?).await
        })
        .await?;
        match epoch {
            Some(epoch) => Ok(Ok(Fence {
                holder: holder.to_string(),
                epoch,
            })),
            None => Ok(Err(self.lease().await?)),
        }
    }

    /// Extends the lease; `false` if `fence` no longer holds it.
    pub async fn renew_lease(
        &self,
        fence: &Fence,
        expires_at: Timestamp,
    ) -> Result<bool, StoreError> {
        let renewed = retrying(|| async {
            let _turn = self.write_turn().await;
            sqlx::query(
                "UPDATE dispatch_lease SET expires_at = $1 WHERE name = 'dispatch' AND holder = $2 AND epoch = $3",
            )
            .bind(expires_at.millis())
            .bind(&fence.holder)
            .bind(fence.epoch)
            .execute(&self.pool()?)
            .await
        })
        .await?;
        Ok(renewed.rows_affected() == 1)
    }

    /// Gives the lease up at once (graceful shutdown), so a standby need not wait for it to
    /// expire.
    pub async fn release_lease(&self, fence: &Fence) -> Result<(), StoreError> {
        retrying(|| async {
            let _turn = self.write_turn().await;
            sqlx::query(
                "UPDATE dispatch_lease SET expires_at = 0 WHERE name = 'dispatch' AND holder = $1 AND epoch = $2",
            )
            .bind(&fence.holder)
            .bind(fence.epoch)
            .execute(&self.pool()?)
            .await
        })
        .await?;
        Ok(())
    }

    pub async fn lease(&self) -> Result<Lease, StoreError> {
        let row = retrying(|| async {
            sqlx::query(
                "SELECT holder, epoch, expires_at FROM dispatch_lease WHERE name = 'dispatch'",
            )
            .fetch_one(&self.pool()?)
            .await
        })
        .await?;
        Ok(Lease {
            holder: row.try_get("holder")?,
            epoch: row.try_get("epoch")?,
            expires_at: Timestamp(row.try_get("expires_at")?),
        })
    }

    /// Records that a node is alive and what it serves; forgets nodes silent for longer
    /// than `forget_after_ms`.
    pub async fn heartbeat(&self, node: &NodeRow, forget_after_ms: i64) -> Result<(), StoreError> {
        retrying(|| async {
            let (_turn, mut tx) = self.begin_write().await?;
            sqlx::query(
                "INSERT INTO nodes (id, url, drivers_connected, sockets, started_at, last_seen) \
                 VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (id) DO UPDATE SET url = $2, drivers_connected = $3, sockets = $4, \
                 started_at = $5, last_seen = $6",
            )
            .bind(&node.id)
            .bind(&node.url)
            .bind(node.drivers_connected)
            .bind(node.sockets)
            .bind(node.started_at.millis())
            .bind(node.last_seen.millis())
            .execute(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM nodes WHERE last_seen < $1")
                .bind(node.last_seen.millis() - forget_after_ms)
                .execute(&mut *tx)
                .await?;
            tx.commit().await
        })
        .await?;
        Ok(())
    }

    /// Every node that reported itself recently, by id.
    pub async fn nodes(&self) -> Result<Vec<NodeRow>, StoreError> {
        let rows = retrying(|| async {
            sqlx::query(
                "SELECT id, url, drivers_connected, sockets, started_at, last_seen FROM nodes ORDER BY id",
            )
            .fetch_all(&self.pool()?)
            .await
        })
        .await?;
        rows.iter()
            .map(|row| {
                Ok(NodeRow {
                    id: row.try_get("id")?,
                    url: row.try_get("url")?,
                    drivers_connected: row.try_get("drivers_connected")?,
                    sockets: row.try_get("sockets")?,
                    started_at: Timestamp(row.try_get("started_at")?),
                    last_seen: Timestamp(row.try_get("last_seen")?),
                })
            })
            .collect()
    }
}
