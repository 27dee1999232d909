//! Passenger and driver accounts and their bearer tokens (stored hashed).

use sqlx::Row;

use super::{Store, StoreError, retrying};
use crate::{
    ids::{new_id, new_token, token_hash},
    trip::{Role, Timestamp},
};

/// A newly created account and its bearer token (shown once).
#[derive(Debug, Clone)]
pub struct NewAccount {
    pub id: String,
    pub token: String,
}

impl Store {
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
            let _turn = self.write_turn().await;
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
            .execute(&self.pool()?)
            .await
        })
        .await?;
        Ok(account)
    }

    /// The account a token's hash belongs to: (id, role).
    pub async fn account_by_token_hash(
        &self,
        hash: &str,
    ) -> Result<Option<(String, Role)>, StoreError> {
        let row = retrying(|| async {
            sqlx::query("SELECT id, role FROM accounts WHERE token_hash = $1")
                .bind(hash)
                .fetch_optional(&self.pool()?)
                .await
        })
        .await?;
        row.map(|row| {
            let role: String = row.try_get("role")?;
            let role = Role::parse(&role)
                .ok_or_else(|| StoreError::Corrupt(format!("account role {role}")))?;
            Ok((row.try_get("id")?, role))
        })
        .transpose()
    }

    pub async fn account_role(&self, id: &str) -> Result<Option<Role>, StoreError> {
        let role: Option<String> = retrying(|| async {
            sqlx::query_scalar("SELECT role FROM accounts WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool()?)
                .await
        })
        .await?;
        role.map(|role| Role::parse(&role).ok_or_else(|| StoreError::Corrupt(role)))
            .transpose()
    }
}
