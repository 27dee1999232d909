-- Operators are people (issue 10): one bearer token each, stored hashed like every other
-- token, created and revoked with `hail operator`. A revoked operator keeps its row (its
-- name stays in the trip events it caused) but loses its token. Same SQL on SQLite and
-- PostgreSQL.
CREATE TABLE operators (
    name        TEXT PRIMARY KEY,
    token_hash  TEXT UNIQUE,
    -- Milliseconds since the Unix epoch.
    created_at  BIGINT NOT NULL,
    revoked_at  BIGINT
);

-- Short-lived, single-use tickets the console opens its WebSocket with, so the
-- long-lived token never travels in a URL. In the store, not in one node's memory: the
-- socket may land on another node than the request that issued it.
CREATE TABLE socket_tickets (
    ticket_hash TEXT PRIMARY KEY,
    -- The operator's name, or 'operator' for the HAIL_OPERATOR_TOKEN bootstrap.
    operator    TEXT NOT NULL,
    expires_at  BIGINT NOT NULL
);
