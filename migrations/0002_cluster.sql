-- The cluster (DESIGN §1 "The cluster"): who caused each event, offers as rows, the
-- dispatch lease, and the nodes that serve. Same SQL on SQLite and PostgreSQL.

-- Who caused each event and why (DESIGN §3 Event.actor, .reason). Events written before
-- this migration are the system's, without a reason.
ALTER TABLE trip_events ADD COLUMN actor_role TEXT NOT NULL DEFAULT 'system';
ALTER TABLE trip_events ADD COLUMN actor_id TEXT;
ALTER TABLE trip_events ADD COLUMN reason TEXT;

-- Every offer the dispatcher made, and what became of it: the durable audit log of
-- dispatch, and what a new leader adopts (open offers keep their deadlines).
CREATE TABLE offers (
    id                TEXT PRIMARY KEY,
    trip_id           TEXT NOT NULL REFERENCES trips (id),
    driver_id         TEXT NOT NULL REFERENCES accounts (id),
    -- The dispatch lease epoch it was made under (see dispatch_lease).
    epoch             BIGINT NOT NULL,
    -- Milliseconds since the Unix epoch.
    made_at           BIGINT NOT NULL,
    expires_at        BIGINT NOT NULL,
    state             TEXT NOT NULL CHECK (state IN
                          ('open', 'accepted', 'declined', 'lapsed', 'withdrawn')),
    closed_at         BIGINT,
    -- For 'withdrawn': expired, cancelled or taken (what the driver is told).
    withdraw_reason   TEXT,
    -- Why this driver: the ranking inputs.
    pickup_distance_m DOUBLE PRECISION NOT NULL,
    pickup_eta_s      DOUBLE PRECISION NOT NULL,
    candidate_rank    INTEGER NOT NULL,
    candidates        INTEGER NOT NULL,
    radius_m          DOUBLE PRECISION NOT NULL
);

-- Invariant 1 across the cluster: at most one open offer per trip and per driver.
CREATE UNIQUE INDEX offers_one_open_per_trip ON offers (trip_id) WHERE state = 'open';
CREATE UNIQUE INDEX offers_one_open_per_driver ON offers (driver_id) WHERE state = 'open';
CREATE INDEX offers_made_at ON offers (made_at);

-- The dispatch lease: one row. `epoch` is the fencing token: every dispatch write checks
-- it in its own transaction (by updating this row), so a leader that lost the lease —
-- paused, partitioned — can never commit again. A new holder always takes epoch + 1.
CREATE TABLE dispatch_lease (
    name       TEXT PRIMARY KEY,
    holder     TEXT,
    epoch      BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
INSERT INTO dispatch_lease (name, holder, epoch, expires_at) VALUES ('dispatch', NULL, 0, 0);

-- Nodes of the cluster, as they last reported themselves (every lease renewal).
CREATE TABLE nodes (
    id                TEXT PRIMARY KEY,
    url               TEXT NOT NULL,
    drivers_connected BIGINT NOT NULL,
    sockets           BIGINT NOT NULL,
    started_at        BIGINT NOT NULL,
    last_seen         BIGINT NOT NULL
);
