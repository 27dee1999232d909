//! Operators are people: one bearer token each (stored hashed), added and revoked with
//! `hail operator`; and the single-use tickets the console opens its WebSocket with.

use sqlx::Row;

use super::{Store, StoreError, retrying};
use crate::{
    ids::{new_token, token_hash},
    trip::Timestamp,
};

/// An operator as `hail operator list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorRecord {
    pub name: String,
    pub created_at: Timestamp,
    pub revoked_at: Option<Timestamp>,
}

impl Store {
    /// Adds an operator and returns its token (shown once), or `None` if an operator of
    /// that name holds a token already. A revoked name may be added again: a new token.
    pub async fn add_operator(&self, name: &str) -> Result<Option<String>, StoreError> {
        let token = new_token();
        let hash = token_hash(&token);
        let now = Timestamp::now().millis();
        let added = retrying(|| async {
            let _turn = self.write_turn().await;
            sqlx::query(
                "INSERT INTO operators (name, token_hash, created_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (name) DO UPDATE \
                 SET token_hash = excluded.token_hash, created_at = excluded.created_at, \
                     revoked_at = NULL \
                 WHERE operators.revoked_at IS NOT NULL",
            )
            .bind(name)
            .bind(&hash)
            .bind(now)
            .execute(&self.pool()?)
            .await
        })
        .await?;
        Ok((added.rows_affected() == 1).then_some(token))
    }

    /// Takes an operator's token away, and its unused tickets; false if it had none.
    pub async fn revoke_operator(&self, name: &str) -> Result<bool, StoreError> {
        let now = Timestamp::now().millis();
        Ok(retrying(|| async {
            let (_turn, mut tx) = self.begin_write().await?;
            let revoked = sqlx::query(
                "UPDATE operators SET token_hash = NULL, revoked_at = $1 \
                 WHERE name = $2 AND revoked_at IS NULL",
            )
            .bind(now)
            .bind(name)
            .execute(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM socket_tickets WHERE operator = $1")
                .bind(name)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(revoked.rows_affected() == 1)
        })
        .await?)
    }

    pub async fn operators(&self) -> Result<Vec<OperatorRecord>, StoreError> {
        let rows = retrying(|| async {
            sqlx::query("SELECT name, created_at, revoked_at FROM operators ORDER BY name")
                .fetch_all(&self.pool()?)
                .await
        })
        .await?;
        rows.iter()
            .map(|row| {
                Ok(OperatorRecord {
                    name: row.try_get("name")?,
                    created_at: Timestamp(row.try_get("created_at")?),
                    revoked_at: row.try_get::<Option<i64>, _>("revoked_at")?.map(Timestamp),
                })
            })
            .collect()
    }

    /// The operator whose token hashes to `hash`, if it is not revoked.
    pub async fn operator_by_token_hash(&self, hash: &str) -> Result<Option<String>, StoreError> {
        Ok(retrying(|| async {
            sqlx::query_scalar("SELECT name FROM operators WHERE token_hash = $1")
                .bind(hash)
                .fetch_optional(&self.pool()?)
                .await
        })
        .await?)
    }

    /// Whether `name` is an operator with a token (not revoked).
    pub async fn operator_active(&self, name: &str) -> Result<bool, StoreError> {
        let found: Option<String> = retrying(|| async {
            sqlx::query_scalar("SELECT name FROM operators WHERE name = $1 AND revoked_at IS NULL")
                .bind(name)
                .fetch_optional(&self.pool()?)
                .await
        })
        .await?;
        Ok(found.is_some())
    }

    /// A new single-use ticket for `operator`, good until `expires_at`; expired ones are
    /// cleared on the way.
    pub async fn issue_ticket(
        &self,
        operator: &str,
        expires_at: Timestamp,
    ) -> Result<String, StoreError> {
        let ticket = new_token();
        let hash = token_hash(&ticket);
        let now = Timestamp::now().millis();
        retrying(|| async {
            let (_turn, mut tx) = self.begin_write().await?;
            sqlx::query("DELETE FROM socket_tickets WHERE expires_at < $1")
                .bind(now)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "INSERT INTO socket_tickets (ticket_hash, operator, expires_at) \
                 VALUES ($1, $2, $3)",
            )
            .bind(&hash)
            .bind(operator)
            .bind(expires_at.millis())
            .execute(&mut *tx)
            .await?;
            tx.commit().await
        })
        .await?;
        Ok(ticket)
    }

    /// Uses a ticket up: the operator it was issued to, if it exists and has not expired.
    pub async fn redeem_ticket(&self, ticket: &str) -> Result<Option<String>, StoreError> {
        let hash = token_hash(ticket);
        let row = retrying(|| async {
            let _turn = self.write_turn().await;
            sqlx::query(
                "DELETE FROM socket_tickets WHERE ticket_hash = $1 \
                 RETURNING operator, expires_at",
            )
            .bind(&hash)
            .fetch_optional(&self.pool()?)
            .await
        })
        .await?;
        let Some(row) = row else { return Ok(None) };
        let expires_at: i64 = row.try_get("expires_at")?;
        Ok((expires_at >= Timestamp::now().millis())
            .then(|| row.try_get("operator"))
            .transpose()?)
    }
}
