//! Who is asking: bearer tokens to [`Principal`]s, and what each role may see.

use std::{collections::HashMap, sync::Mutex};

use crate::{
    error::ApiError,
    ids::{constant_time_eq, token_hash},
    store::{Store, StoreError},
    trip::{Role, Trip, TripEvent},
};

/// Most cached token → account entries; the cache is cleared when it fills. Tokens never
/// change owner, so a cached answer cannot go wrong, only old.
const CACHE_ENTRIES: usize = 100_000;

/// Longest token accepted; ours are 64 hex characters.
pub const MAX_TOKEN_CHARS: usize = 256;

/// Who `HAIL_OPERATOR_TOKEN` is: the bootstrap operator, for the first sign-in and the
/// demo. Named operators (`hail operator add`) are people; this name is not available to
/// them.
pub const BOOTSTRAP_OPERATOR: &str = "operator";

/// Whether `name` may name an operator: 1–64 of letters, digits and `.`, `_`, `-`, `@`
/// (a login or an e-mail address), and not the bootstrap operator's.
pub fn check_operator_name(name: &str) -> Result<(), String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@');
    if name.is_empty() || name.len() > 64 || !name.chars().all(allowed) {
        Err(format!(
            "{name:?} is not an operator name: 1 to 64 letters, digits, '.', '_', '-' or '@'"
        ))
    } else if name == BOOTSTRAP_OPERATOR {
        Err(format!(
            "{name:?} is the HAIL_OPERATOR_TOKEN bootstrap operator's name; choose another"
        ))
    } else {
        Ok(())
    }
}

/// Who is acting.
#[derive(Debug, Clone, PartialEq, Eq)]
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
                role.as_str()
            )))
        }
    }

    /// Whether this caller may see the trip: its passenger, its driver, or an operator.
    pub fn can_see(&self, trip: &Trip) -> bool {
        match self.role {
            Role::Operator => true,
            Role::Passenger => trip.passenger_id == self.id,
            Role::Driver => trip.driver_id.as_deref() == Some(self.id.as_str()),
            Role::System => false,
        }
    }

    pub fn actor(&self) -> crate::trip::Actor {
        crate::trip::Actor::new(self.role, &self.id)
    }

    /// What this caller may read of an event: a driver who took over a handed-back trip
    /// does not learn who drove it before (their id is blanked in the trip and the actor).
    pub fn redact(&self, mut event: TripEvent) -> TripEvent {
        if self.role == Role::Driver {
            if event.trip.driver_id.as_deref() != Some(self.id.as_str()) {
                event.trip.driver_id = None;
            }
            if event.actor.role == Role::Driver
                && event.actor.id.as_deref() != Some(self.id.as_str())
            {
                event.actor.id = None;
            }
        }
        event
    }
}

/// Maps bearer tokens to principals: the configured operator token, else the accounts in
/// the store (cached), else the named operators (not cached: a revoked operator is out at
/// once, on every node).
pub struct Authenticator {
    store: Store,
    operator_token_hash: String,
    /// A std `Mutex`: held for one map operation, never across an await.
    cache: Mutex<HashMap<String, Principal>>,
}

impl Authenticator {
    pub fn new(store: Store, operator_token: &str) -> Authenticator {
        Authenticator {
            store,
            operator_token_hash: token_hash(operator_token),
            cache: Mutex::default(),
        }
    }

    /// The principal a bearer token belongs to, if any.
    pub async fn authenticate(&self, token: &str) -> Result<Option<Principal>, StoreError> {
        let hash = token_hash(token);
        if constant_time_eq(&hash, &self.operator_token_hash) {
            return Ok(Some(operator(BOOTSTRAP_OPERATOR)));
        }
        if let Some(found) = self.cache.lock().unwrap().get(&hash) {
            return Ok(Some(found.clone()));
        }
        if let Some((id, role)) = self.store.account_by_token_hash(&hash).await? {
            let found = Principal { id, role };
            let mut cache = self.cache.lock().unwrap();
            if cache.len() >= CACHE_ENTRIES {
                cache.clear();
            }
            cache.insert(hash, found.clone());
            return Ok(Some(found));
        }
        Ok(self
            .store
            .operator_by_token_hash(&hash)
            .await?
            .map(|name| operator(&name)))
    }

    /// The operator a console ticket was issued to, using the ticket up.
    pub async fn redeem_ticket(&self, ticket: &str) -> Result<Option<Principal>, StoreError> {
        let Some(name) = self.store.redeem_ticket(ticket).await? else {
            return Ok(None);
        };
        Ok(self
            .still_valid(&operator(&name))
            .await?
            .then(|| operator(&name)))
    }

    /// Whether a principal authenticated earlier may still act: a named operator may have
    /// been revoked since (long-lived operator streams ask this now and then).
    pub async fn still_valid(&self, principal: &Principal) -> Result<bool, StoreError> {
        if principal.role != Role::Operator || principal.id == BOOTSTRAP_OPERATOR {
            return Ok(true);
        }
        self.store.operator_active(&principal.id).await
    }
}

fn operator(name: &str) -> Principal {
    Principal {
        id: name.to_string(),
        role: Role::Operator,
    }
}
